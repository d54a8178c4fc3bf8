"""`feedline new-service`: a scaffolded service passes its own tests, serves, and is subscribed to.

The generated folder is used as a developer would: its tests run with
``python -m pytest`` in it, ``feedline serve PACKAGE.service:definition`` serves
it from there, and a real ``feedline subscribe`` run with the projection its
EventSubscription sample names brings the service's events into a read model.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from feedline_contracts.eventsubscription.model import EventSubscription
from tests.support.services import FEEDLINE, running_service
from tests.support.subscriber_process import run_subscriber, subscriber_env

pytestmark = pytest.mark.integration

NAME = "gift-cards"
PACKAGE = "gift_cards"
REPO = Path(__file__).resolve().parents[2]


def feedline(*args: str) -> subprocess.CompletedProcess[str]:
    # Wide enough that rich does not wrap an error message inside its box.
    environment = {**os.environ, "COLUMNS": "300"}
    return subprocess.run(
        [FEEDLINE, *args], capture_output=True, text=True, timeout=60, check=False, env=environment
    )


def new_service(parent: Path, name: str = NAME) -> subprocess.CompletedProcess[str]:
    return feedline("new-service", name, "--directory", str(parent))


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    parent = tmp_path_factory.mktemp("scaffold")
    created = new_service(parent)
    assert created.returncode == 0, created.stderr
    return parent / NAME


def test_the_scaffold_writes_a_service_with_its_tests_and_manifests(scaffolded: Path) -> None:
    files = sorted(str(path.relative_to(scaffolded)) for path in scaffolded.rglob("*.*"))
    assert files == [
        "README.md",
        "deploy/eventsubscription.yaml",
        "deploy/secrets.yaml",
        "deploy/values.yaml",
        f"{PACKAGE}/__init__.py",
        f"{PACKAGE}/projection.py",
        f"{PACKAGE}/service.py",
        "pyproject.toml",
        "tests/test_service.py",
    ]


def test_the_generated_service_passes_its_own_tests(scaffolded: Path) -> None:
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=scaffolded,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert "6 passed" in tests.stdout


def test_the_generated_code_is_lint_and_type_clean(scaffolded: Path) -> None:
    """ruff and mypy --strict, with the generated project's own settings: users start clean.

    mypy sees the chassis's types because the feedline packages ship py.typed.
    """
    tools = Path(sys.executable).parent
    for argv in (
        [str(tools / "ruff"), "check", "."],
        [str(tools / "ruff"), "format", "--check", "."],
        [str(tools / "mypy"), "--cache-dir", str(scaffolded.parent / ".mypy_cache"), "."],
    ):
        checked = subprocess.run(
            argv, cwd=scaffolded, capture_output=True, text=True, timeout=300, check=False
        )
        assert checked.returncode == 0, f"{argv[1:]}: {checked.stdout[-4000:]}"


def test_the_eventsubscription_sample_is_valid_and_reads_the_service_into_its_read_model(
    scaffolded: Path, tmp_path: Path
) -> None:
    manifest: dict[str, Any] = yaml.safe_load(
        (scaffolded / "deploy" / "eventsubscription.yaml").read_text()
    )
    subscription = EventSubscription.from_body(manifest)  # the CRD's own model accepts it
    read_model = tmp_path / "read-model.db"
    with running_service(
        f"{PACKAGE}.service:definition", f"sqlite:///{tmp_path}/service.db", cwd=scaffolded
    ) as base_url:
        for name in ("first", "second"):
            created = httpx.post(f"{base_url}/items", json={"name": name}, timeout=10)
            assert created.status_code == 201, created.text
        environment = subscriber_env(
            subscription.name,
            f"{base_url}/events",
            f"sqlite:///{read_model}",
            subscription.spec.read_model.projection,
            FEEDLINE_EVENT_TYPES=",".join(subscription.spec.feed.event_types),
            PYTHONPATH=str(scaffolded),  # the generated package, as its image would install it
        )
        finished = run_subscriber(environment)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.summary["position"] == 2
    with sqlite3.connect(read_model) as connection:
        rows = connection.execute("SELECT item_id, name FROM gift_cards_items").fetchall()
    assert sorted(rows) == [(1, "first"), (2, "second")]


def test_bad_names_and_existing_folders_are_refused_naming_them(tmp_path: Path) -> None:
    bad = new_service(tmp_path, "Gift_Cards")
    assert bad.returncode == 2
    assert "'Gift_Cards' is not a service name" in bad.stderr
    assert "lowercase DNS label" in bad.stderr
    shadowing = new_service(tmp_path, "json")
    assert shadowing.returncode == 2
    assert "'json' already exists" in shadowing.stderr

    assert new_service(tmp_path).returncode == 0
    (tmp_path / NAME / "README.md").write_text("mine")
    again = new_service(tmp_path)
    assert again.returncode == 2
    assert "already exists" in again.stderr
    assert (tmp_path / NAME / "README.md").read_text() == "mine"  # nothing overwritten


def test_serve_names_what_it_accepts_for_an_unknown_service() -> None:
    refused = feedline("serve", "gift_cards_missing.service:definition")
    assert refused.returncode == 2
    assert "cannot import 'gift_cards_missing.service'" in refused.stderr
    assert "is the service's package installed" in refused.stderr
