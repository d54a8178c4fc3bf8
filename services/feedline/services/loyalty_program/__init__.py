"""loyalty-program: users, and a read model of special offers built by a subscriber."""
