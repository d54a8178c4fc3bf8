"""`feedline operator`: bad flags exit 2 and name the flag."""

from __future__ import annotations

from pathlib import Path

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


@pytest.fixture
def never_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator must not start (it would retry a bad kubeconfig forever)."""
    import feedline_operator.runtime

    async def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the operator started")

    monkeypatch.setattr(feedline_operator.runtime, "run_operator", refuse)


@pytest.mark.usefixtures("never_run")
def test_a_missing_kubeconfig_exits_2_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    result = CliRunner().invoke(app, ["operator", "-A", "--kubeconfig", str(missing)])
    assert result.exit_code == 2, result.output
    assert f"--kubeconfig (KUBECONFIG): {missing}: no such file" in result.output


@pytest.mark.usefixtures("never_run")
def test_an_unusable_kubeconfig_exits_2_naming_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "config"
    empty.write_text("")
    garbled = tmp_path / "garbled"
    garbled.write_text("apiVersion: v1\nkind: Config\ncurrent-context: nowhere\n")
    for path in (empty, garbled):
        result = CliRunner().invoke(app, ["operator", "-A"], env={"KUBECONFIG": str(path)})
        assert result.exit_code == 2, result.output
        assert f"--kubeconfig (KUBECONFIG): {path}: " in result.output
        assert len(result.output.splitlines()) == 1, result.output
