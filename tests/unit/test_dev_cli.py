"""`feedline dev [DIR]` runs a folder; `feedline dev run-now NAME [DIR]` asks the running one."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from feedline.cli import app

pytestmark = pytest.mark.unit


def _words(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def test_dev_help_shows_the_run_options_and_names_run_now() -> None:
    result = CliRunner().invoke(app, ["dev", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = _words(result.output)
    for option in ("--state-dir", "--port-offset", "--once", "--run-now", "--service"):
        assert option in text
    assert "feedline dev run-now NAME [DIR]" in text
    assert "a crashed process was not back up at the end" in text


def test_run_now_help() -> None:
    result = CliRunner().invoke(app, ["dev", "run-now", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = _words(result.output)
    assert "NAME" in text
    assert "STATE/control.json" in text
