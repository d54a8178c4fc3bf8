"""The generic subscriber: reads an HTTP event feed into a read model."""
