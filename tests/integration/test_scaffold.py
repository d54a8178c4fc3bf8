"""`feedline new-service`: a scaffolded service passes its own tests, serves, and is subscribed to.

The generated folder is used as a developer would: its tests run with
``python -m pytest`` in it, ``feedline serve PACKAGE.service:definition`` serves
it from there, and a real ``feedline subscribe`` run with the projection its
EventSubscription sample names brings the service's events into a read model;
``feedline dev deploy``, started in the folder, runs the service (from its
values file) with the generated subscription, and run-now brings its items in.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from feedline_contracts.eventsubscription.model import EventSubscription
from tests.integration.test_dev_local_mode import free_port_offset
from tests.support.processes import stop
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


def _dev_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return document


def _wait_for(what: str, check: Any, log: Path, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(
        f"{what} within {timeout} s; feedline dev said:\n{log.read_text()[-4000:]}"
    )


def test_feedline_dev_runs_the_scaffolded_service_with_its_generated_subscription(
    scaffolded: Path, tmp_path: Path
) -> None:
    project = tmp_path / NAME
    shutil.copytree(scaffolded, project, ignore=shutil.ignore_patterns(".feedline-dev"))
    state_dir = project / "deploy" / ".feedline-dev"
    log = tmp_path / "dev.out"
    subscription = f"{NAME}-items"
    argv = [FEEDLINE, "dev", "deploy", "--port-offset", str(free_port_offset())]
    environment = {**os.environ, "COLUMNS": "200"}
    environment.pop("PYTHONPATH", None)  # the generated package imports from the folder only
    with log.open("wb") as out:
        # Started in the project's folder, as its README says: the package imports from there.
        dev = subprocess.Popen(
            [*argv, "--dashboard-port", "0"], cwd=project, stdout=out, stderr=out, env=environment
        )
    try:

        def service_ready() -> str | None:
            status = _dev_status(state_dir)
            service = (status or {}).get("services", {}).get(NAME, {})
            return str(service["url"]) if service.get("state") == "Ready" else None

        base_url = _wait_for(f"{NAME} ready under feedline dev", service_ready, log)
        for name in ("first", "second"):
            created = httpx.post(f"{base_url}/items", json={"name": name}, timeout=10)
            assert created.status_code == 201, created.text
        asked = subprocess.run(
            [FEEDLINE, "dev", "run-now", subscription, "deploy"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert asked.returncode == 0, asked.stderr

        def caught_up() -> dict[str, Any] | None:
            status = _dev_status(state_dir)
            [entry] = (status or {}).get("subscriptions", [{}])
            return entry if entry.get("position") == 2 and entry.get("lag") == 0 else None

        entry = _wait_for(f"{subscription} at position 2", caught_up, log)
        assert entry["outcome"] == "CaughtUp"
    finally:
        stop(dev, grace_seconds=15)
    assert dev.returncode == 0, log.read_text()[-4000:]
    with sqlite3.connect(state_dir / f"{NAME}-read-model.db") as connection:
        rows = connection.execute("SELECT item_id, name FROM gift_cards_items").fetchall()
    assert sorted(rows) == [(1, "first"), (2, "second")]
