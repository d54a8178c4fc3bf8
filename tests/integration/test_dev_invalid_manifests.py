"""`feedline dev DIR` exits 2 on each manifest the API server refuses, naming the same field.

The command itself (in process: no service starts before validation), over
the invalid manifests the cluster tier sends to a real kube-apiserver
(tests/data/eventsubscriptions/invalid; tests/cluster/test_operator_validation.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from feedline.cli import app
from tests.support.eventsubscription_cases import INVALID, InvalidCase, invalid_params

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("case", invalid_params())
def test_feedline_dev_exits_2_naming_the_field(tmp_path: Path, case: InvalidCase) -> None:
    manifest = tmp_path / f"{case.name}.yaml"
    shutil.copy(INVALID / manifest.name, manifest)
    result = CliRunner().invoke(app, ["dev", str(tmp_path), "--once"])
    assert result.exit_code == 2, result.output
    said = " ".join(result.stderr.split())  # the console may wrap long lines
    name = case.body["metadata"]["name"]
    assert said.startswith(f'feedline dev: {manifest}: EventSubscription "{name}": '), said
    # A rule on the whole object (the name's length) has no field path, as from
    # the API server; its message names the field.
    assert f": {case.field}: " in said or (": <root>: " in said and case.field in said), said
    assert " ".join(case.words.split()) in said, said
    assert not (tmp_path / ".feedline-dev").exists()  # nothing was started
