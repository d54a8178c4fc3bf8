"""How the operator reports: Kubernetes Events (posted on purpose) and handler loggers."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf

# kopf hands each handler a logger adapter that tags lines with the object.
Logger = logging.Logger | logging.LoggerAdapter[Any]


def as_body(raw: Mapping[str, Any]) -> kopf.Body:
    """kopf posts Events about any object given as a body."""
    return kopf.Body(cast(kopf.RawBody, dict(raw)))
