"""The service chassis: what every Feedline service gets without code of its own."""
