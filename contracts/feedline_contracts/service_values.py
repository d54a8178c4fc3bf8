"""The feedline-service chart's two values that say which service runs.

``feedlineService`` names the service (an example's name, or your service's
name: a DNS label that also names the chart's objects); ``serviceApp`` is the
import path of your service's ``ServiceDefinition`` (``feedline serve`` takes
it), empty for an example. The chart's values.schema.json spells the same
patterns (a unit test compares them), and `feedline dev` reads a values file
with them as a service to run (docs/local-mode.md, "Services of your own").
"""

from __future__ import annotations

import re
from typing import Final

SERVICE_NAME_KEY: Final = "feedlineService"
SERVICE_APP_KEY: Final = "serviceApp"

# A DNS label that starts with a letter, at most 40 characters: the chart's object
# names add suffixes to it and must stay within 63.
SERVICE_NAME_PATTERN: Final = re.compile(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?")
SERVICE_APP_PATTERN: Final = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
)
SERVICE_NAME_FORM: Final = (
    "a lowercase DNS label starting with a letter, at most 40 characters (e.g. gift-cards)"
)
SERVICE_APP_FORM: Final = (
    "package.module:attribute, the service's ServiceDefinition (e.g. gift_cards.service:definition)"
)
