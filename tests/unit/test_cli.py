"""`feedline` itself: the version, and what `feedline serve --help` promises."""

from __future__ import annotations

from importlib.metadata import version
from itertools import pairwise
from pathlib import Path

import pytest
from typer.testing import CliRunner

from feedline.cli import app

pytestmark = pytest.mark.unit


def test_version_prints_the_installed_distributions_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"feedline {version('feedline')}\n"
    assert result.output == "feedline 0.1.0\n"


def test_serve_help_documents_the_default_database_and_the_exit_codes() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "sqlite:///SERVICE.db" in text
    assert "Exit codes: 0 stopped" in text
    assert "2 bad flags or settings" in text
    assert "3 the database cannot be used" in text


HELP_COMMANDS = [
    [],
    ["serve"],
    ["subscribe"],
    ["operator"],
    ["new-service"],
    ["dev", "up"],
    ["dev", "run-now"],
]


def _prose_paragraphs(output: str) -> list[list[str]]:
    """The help's text outside the option boxes, as paragraphs of lines."""
    paragraphs: list[list[str]] = [[]]
    for line in output.splitlines():
        text = line.strip()
        if not text or text[0] in "╭│╰" or text.startswith("Usage:"):
            paragraphs.append([])
        else:
            paragraphs[-1].append(text)
    return [paragraph for paragraph in paragraphs if paragraph]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "feedline")
def test_help_paragraphs_are_wrapped_to_the_terminal(command: list[str]) -> None:
    """A paragraph of a command's help fills each line before it breaks: the
    docstring's own line breaks (kept by typer's "rich" markup) made ragged text."""
    width = 80
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=width)
    assert result.exit_code == 0, result.output
    for paragraph in _prose_paragraphs(result.output):
        for line, following in pairwise(paragraph):
            next_word = following.split()[0]
            # Rich indents the text by one column and keeps one free at the end.
            assert len(line) + 1 + len(next_word) > width - 2, (
                f"{' '.join(command)} --help broke early after {line!r} "
                f"(the next word {next_word!r} fits)"
            )


def _flat(output: str) -> str:
    """Rich's error box unwrapped into one line of words."""
    return " ".join(output.replace("│", " ").replace("╭", " ").replace("╰", " ").split())


@pytest.fixture
def never_serve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`feedline serve` must fail before it serves (and writes nothing here)."""
    import uvicorn

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the service started")

    monkeypatch.setattr(uvicorn, "run", refuse)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("never_serve")
@pytest.mark.parametrize("old", ["kubernetes", "serviceaccount"])
def test_serve_refuses_an_old_feed_auth_name_naming_the_variable(old: str) -> None:
    result = CliRunner().invoke(
        app, ["serve", "special-offers"], env={"FEEDLINE_FEED_AUTH": old, "COLUMNS": "300"}
    )
    assert result.exit_code == 2
    text = _flat(result.output)
    assert f"FEEDLINE_FEED_AUTH: {old!r} is an old name: use ServiceAccountToken" in text
    assert "None, Token, ServiceAccountToken" in text
    assert "--feed-auth" not in text  # `feedline serve` has no such flag
