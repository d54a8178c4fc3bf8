"""The book's example services, each built on the chassis."""
