"""`feedline operator`: bad flags exit 2 and name the flag."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from feedline.cli import app

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["operator"], "--namespace"),
        (["operator", "-n", "a", "--all-namespaces"], "--all-namespaces"),
        (["operator", "-A", "--image-pull-policy", "Sometimes"], "--image-pull-policy"),
        (["operator", "-A", "--workers", "0"], "--workers"),
        (["operator", "-A", "--log-format", "xml"], "--log-format"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(argv: list[str], named: str) -> None:
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2
    assert named in result.output


def test_help_lists_the_options() -> None:
    result = CliRunner().invoke(app, ["operator", "--help"])
    assert result.exit_code == 0
    for option in ("--namespace", "--all-namespaces", "--kubeconfig", "--subscriber-image"):
        assert option in result.output
