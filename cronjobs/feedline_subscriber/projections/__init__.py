"""Built-in projections (docs/subscriber.md lists their import paths and tables)."""
