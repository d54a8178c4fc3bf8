"""The CRD is generated from the model (`make crd`); a stale committed copy fails here.

Both committed copies are compared with the CRD generated in memory: the
chart's (what Helm installs) and the package's (what the wheel ships and
`feedline dev` validates against). Edit the model, not the YAML, then run
`make crd`.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from feedline.dev.schema import apply_defaults, validate
from feedline_contracts import subscriber_env
from feedline_contracts.eventsubscription import EventSubscriptionSpec, model
from feedline_contracts.eventsubscription import crd as crd_file
from feedline_operator import status
from tests.support.operator_fixtures import CRD_PATH, REPO_ROOT

pytestmark = pytest.mark.unit

PACKAGE_COPY = REPO_ROOT / "contracts" / "feedline_contracts" / "eventsubscription" / "crd.yaml"
STALE = "stale: run `make crd` (edit the model in feedline_contracts.eventsubscription.model)"


@pytest.mark.parametrize("path", [CRD_PATH, PACKAGE_COPY], ids=["chart", "package"])
def test_the_committed_crd_is_generated_from_the_model(path: Path) -> None:
    assert path.read_text() == crd_file.render(), f"{path} is {STALE}"


def test_a_model_changed_alone_makes_the_committed_crd_stale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    field = model.EventSubscriptionSpec.model_fields["batch_size"]
    monkeypatch.setattr(field, "description", "Events per page.")
    assert crd_file.render() != CRD_PATH.read_text()


def test_a_crd_edited_alone_is_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edited = tmp_path / "edited.yaml"
    edited.write_text(CRD_PATH.read_text().replace("default: 1000", "default: 500"))
    current = tmp_path / "current.yaml"
    current.write_text(CRD_PATH.read_text())
    assert crd_file.main(["--check", str(current)]) == 0
    assert crd_file.main(["--check", str(edited), str(current)]) == 1
    assert f"stale (run make crd): {edited}" in capsys.readouterr().err
    assert crd_file.main([str(edited)]) == 0  # what `make crd` does: rewrite it
    assert edited.read_text() == crd_file.render()


def test_the_package_ships_the_same_crd() -> None:
    assert crd_file.shipped() == yaml.safe_load(CRD_PATH.read_text()) == crd_file.build()
    # The wheel holds the package folder whole, crd.yaml included (hatch `packages`).
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert "contracts/feedline_contracts" in wheel["packages"]
    assert not wheel.get("exclude")


def _nodes(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for key, prop in node.get("properties", {}).items():
        found += _nodes(prop, f"{path}.{key}")
    if "items" in node:
        found += _nodes(node["items"], f"{path}[]")
    return found


def test_the_generated_schema_is_structural() -> None:
    """What the API server requires of a CRD schema: no $ref, titles or typed anyOf; types."""
    for path, node in _nodes(crd_file.openapi_schema(crd_file.build())):
        assert not {"$ref", "$defs", "title", "allOf", "oneOf", "not", "nullable"} & set(node)
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            assert "type" not in node, path
        else:
            assert "anyOf" not in node, path
            assert node.get("type") in {"object", "array", "string", "integer", "boolean"}, path
        for rule in node.get("x-kubernetes-validations", []):
            assert set(rule) <= {"rule", "message", "fieldPath", "reason"}, path
            assert rule["message"], path
            assert rule["reason"], path


def test_the_reserved_env_rule_is_made_from_the_prefix() -> None:
    env = crd_file.openapi_schema(crd_file.build())["properties"]["spec"]["properties"][
        "subscriber"
    ]["properties"]["env"]
    (rule,) = env["items"]["x-kubernetes-validations"]
    assert rule["rule"] == f"!self.name.startsWith('{subscriber_env.PREFIX}')"
    assert rule["message"] == model.RESERVED_ENV_MESSAGE


def test_the_api_servers_defaults_are_the_models() -> None:
    """Defaulting by the CRD, then reading, is the same as reading with the model's defaults."""
    minimal = {
        "feed": {"url": "http://x/events"},
        "schedule": "@hourly",
        "readModel": {"databaseSecretRef": {"name": "a", "key": "b"}, "projection": "m:f"},
    }
    spec_schema = crd_file.openapi_schema(crd_file.build())["properties"]["spec"]
    by_the_crd = apply_defaults(minimal, spec_schema)
    assert EventSubscriptionSpec.model_validate(by_the_crd) == (
        EventSubscriptionSpec.model_validate(minimal)
    )
    assert by_the_crd["feed"]["auth"] == {"type": "None"}
    assert by_the_crd["retry"] == {"maxAttempts": 3, "backoffSeconds": 1}
    assert "replay" not in by_the_crd


def test_a_type_without_an_openapi_form_is_refused() -> None:
    class Odd(BaseModel):
        when: float

    with pytest.raises(crd_file.ModelError):
        crd_file.object_schema(Odd)


def test_the_status_the_operator_writes_fits_the_status_model() -> None:
    """The operator's status (a reconcile, then a finished run) passes the CRD's status schema."""
    now = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    written = status.with_reconcile(
        {},
        generation=2,
        ready=True,
        reason="ChildInSync",
        message="CronJob in sync",
        child_kind="CronJob",
        child_name="loyalty",
        now=now,
    )
    summary = (
        '{"subscription": "loyalty", "position": 40, "head": 42, "lag": 2, "processed": 10,'
        ' "deadLettered": 1, "outcome": "Progressed", "message": "",'
        ' "startTime": "2024-05-01T10:00:00Z", "completionTime": "2024-05-01T10:00:03Z"}'
    )
    run = status.parse_summary("loyalty-1-abc", summary)
    assert run is not None
    written = status.with_run(written, run, generation=2, now=now)
    status_schema = crd_file.openapi_schema(crd_file.build())["properties"]["status"]
    assert validate(written, status_schema, "status") == []
    read = model.EventSubscriptionStatus.model_validate(written)
    assert (read.position, read.lag, read.child_kind) == (40, 2, "CronJob")
    assert read.last_run is not None
    assert read.last_run.outcome == "Progressed"
    assert {c.type for c in read.conditions} == {"Ready", "CaughtUp", "Stalled"}
