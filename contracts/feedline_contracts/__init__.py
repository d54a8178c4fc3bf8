"""Contracts between Feedline's parts: the values two parts must agree on.

This is the bottom layer: it imports no other first-party package, and the
chassis, the subscriber, the operator and the CLI import from it. A path, a
name, a limit or a vocabulary that crosses a seam is defined here once.
"""
