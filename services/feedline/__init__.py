"""Feedline: event-based collaboration between microservices on Kubernetes."""

__version__ = "0.1.0"
