"""`feedline dev` runs services of your own from their feedline-service values files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from feedline.dev import plan
from feedline.dev.manifests import ManifestError, Source, parse_service_values, read_folder
from feedline.dev.plan import Layout
from feedline_contracts.service_values import SERVICE_APP_PATTERN, SERVICE_NAME_PATTERN

pytestmark = pytest.mark.unit

SERVICE_CHART_SCHEMA = Path(__file__).parents[2] / "charts/feedline-service/values.schema.json"
SOURCE = Source(Path("/folder/values.yaml"))
APP = "gift_cards.service:definition"


def test_the_service_chart_checks_both_values_with_the_contracts_patterns() -> None:
    """The chart accepts exactly what `feedline dev` accepts (empty: the chart's default)."""
    properties = json.loads(SERVICE_CHART_SCHEMA.read_text())["properties"]
    assert properties["feedlineService"]["pattern"] == f"^$|^{SERVICE_NAME_PATTERN.pattern}$"
    assert properties["serviceApp"]["pattern"] == f"^$|^{SERVICE_APP_PATTERN.pattern}$"


def test_a_values_file_of_your_own_service_is_a_service_to_run() -> None:
    values = parse_service_values({"feedlineService": "gift-cards", "serviceApp": APP}, SOURCE)
    assert values is not None
    assert (values.name, values.app) == ("gift-cards", APP)
    # An example's values: dev runs the examples anyway.
    assert parse_service_values({"feedlineService": "special-offers"}, SOURCE) is None


@pytest.mark.parametrize(
    ("doc", "field", "words"),
    [
        ({"feedlineService": "Gift_Cards", "serviceApp": APP}, "feedlineService", "DNS label"),
        (
            {"feedlineService": "gift-cards", "serviceApp": "gift_cards.service"},
            "serviceApp",
            "package.module:attribute",
        ),
        ({"feedlineService": "gift-cards"}, "serviceApp", "not an example service"),
        (
            {"feedlineService": "special-offers", "serviceApp": APP},
            "feedlineService",
            "an example service's name",
        ),
    ],
)
def test_bad_values_name_the_field_and_what_is_accepted(
    doc: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ManifestError) as raised:
        parse_service_values(doc, SOURCE)
    [line] = raised.value.lines()
    assert str(SOURCE) in line
    assert f"{field}:" in line
    assert words in line


def test_every_bad_values_file_is_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(f"feedlineService: gift-cards\nserviceApp: {APP}\n")
    (tmp_path / "b.yaml").write_text(f"feedlineService: gift-cards\nserviceApp: {APP}\n")
    (tmp_path / "c.yaml").write_text("feedlineService: vouchers\n")
    folder, errors = read_folder(tmp_path)
    assert [(s.name, s.app) for s in folder.services] == [("gift-cards", APP)]
    lines = [line for error in errors for line in error.lines()]
    assert any("b.yaml" in line and "also in" in line and "a.yaml" in line for line in lines)
    assert any("c.yaml" in line and "serviceApp" in line for line in lines)


def test_a_feed_of_your_own_service_maps_to_its_local_ports() -> None:
    layout = Layout(
        Path("/folder"),
        Path("/state"),
        apps={"gift-cards": APP},
        app_ports={"gift-cards": 41001},
        grpc_ports={"gift-cards": 41002},
        python_path="/project",
    )
    assert plan.local_feed_url("http://gift-cards/events", layout) == (
        "http://127.0.0.1:41001/events"
    )
    assert plan.local_feed_url("http://gift-cards.shop.svc/events", layout) == (
        "http://127.0.0.1:41001/events"
    )
    assert plan.local_feed_url("grpc://gift-cards:9090", layout) == "grpc://127.0.0.1:41002"
    spec = plan.service_process("gift-cards", layout, "feedline")
    assert spec.argv[:3] == ("feedline", "serve", APP)
    assert re.search(r"--port 41001\b", " ".join(spec.argv))
    assert spec.env["PYTHONPATH"] == "/project"
    assert layout.service_names[-1] == "gift-cards"
