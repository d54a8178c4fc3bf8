"""One table of every benchmark's headline figures, from their saved output.

Run: ``.venv/bin/python -m bench.summary LOG...`` (``make bench-full`` saves
each benchmark's stdout under ``bench-results/`` and calls this at the end).

The newer benchmarks (shapes, appends, feed size) end with a line
``SUMMARY {json}``: ``{"module": ..., "figures": [{"name", "value", "unit",
"detail"?}]}``, taken as it is. The older ones print text: their ratio lines
(``subscriber / COPY: 0.2458 = ...``, a transport's ``... / COPY rows/s``
figures) and the operator's JSON are read with the patterns below. A log
with no figure it can read is listed as such, never skipped silently.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

SUMMARY_PREFIX = "SUMMARY "
RATIO_LINE = re.compile(r"^(?P<name>[^:\n]+?):\s+(?P<value>\d[\d.,]*) = (?P<detail>.+)$")
TRANSPORT_ROW = re.compile(
    r"^(?P<name>HTTP|gRPC|RabbitMQ stream)\s+(?P<seconds>[\d.]+)\s+(?P<rate>[\d,]+)\s+"
    r"(?P<value>[\d.]+) = (?P<detail>[\d,]+ / [\d,]+)"
)
OPERATOR_KEYS = (
    "all_ready_seconds",
    "subscriptions_ready_per_second",
    "p50_seconds",
    "p99_seconds",
    "operator_peak_rss_mib",
)


@dataclass(frozen=True)
class Figure:
    source: str
    name: str
    value: str
    unit: str
    detail: str = ""


def summary_line(module: str, figures: Sequence[dict[str, object]]) -> str:
    """The ``SUMMARY {json}`` line a benchmark ends with: its headline figures, each
    ``{"name", "value", "unit", "detail"?}``."""
    return SUMMARY_PREFIX + orjson.dumps({"module": module, "figures": list(figures)}).decode()


def _number(text: str) -> str:
    return text.replace(",", "")


def figures_from(source: str, lines: Sequence[str]) -> list[Figure]:
    """The headline figures a benchmark's output holds."""
    found: list[Figure] = []
    for line in lines:
        if line.startswith(SUMMARY_PREFIX):
            data: dict[str, Any] = orjson.loads(line[len(SUMMARY_PREFIX) :])
            for figure in data.get("figures", []):
                found.append(
                    Figure(
                        source,
                        str(figure["name"]),
                        str(figure["value"]),
                        str(figure.get("unit", "")),
                        str(figure.get("detail", "")),
                    )
                )
    if found:
        return found
    for line in lines:
        stripped = line.strip()
        transport = TRANSPORT_ROW.match(stripped)
        if transport:
            found.append(
                Figure(
                    source,
                    f"catch-up {transport['name']} / COPY",
                    transport["value"],
                    "x floor",
                    transport["detail"] + " events/s",
                )
            )
            continue
        matched = RATIO_LINE.match(stripped)
        if matched and " / " in matched["name"]:
            found.append(
                Figure(
                    source,
                    matched["name"].strip(),
                    _number(matched["value"]),
                    "ratio",
                    matched["detail"].strip(),
                )
            )
    opening = next((i for i, line in enumerate(lines) if line.startswith("{")), None)
    if not found and opening is not None:
        try:
            data = orjson.loads("\n".join(lines[opening:]))
        except orjson.JSONDecodeError:
            data = {}
        if isinstance(data, dict):
            found.extend(
                Figure(source, key, str(data[key]), "") for key in OPERATOR_KEYS if key in data
            )
    return found


def table(figures: Sequence[Figure], unread: Sequence[str]) -> list[str]:
    lines = [f"{'benchmark':18}{'figure':46}{'value':>12}  {'unit':10}detail"]
    for figure in figures:
        lines.append(
            f"{figure.source[:18]:18}{figure.name[:46]:46}{figure.value:>12}  "
            f"{figure.unit:10}{figure.detail}"
        )
    lines.extend(f"{source}: no figure found in its output" for source in unread)
    return lines


def main(paths: Sequence[str]) -> int:
    figures: list[Figure] = []
    unread: list[str] = []
    for path in map(Path, paths):
        source = path.stem
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            unread.append(f"{source} ({exc.strerror})")
            continue
        found = figures_from(source, lines)
        figures.extend(found)
        if not found:
            unread.append(source)
    print()
    print("Summary (each figure as its benchmark printed it; docs/benchmarks.md explains them)")
    for line in table(figures, unread):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
