"""`feedline dev` reads a folder: good manifests load; a bad one exits 2 naming file and field."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from feedline.dev import schema
from feedline.dev.manifests import ManifestError, load_folder
from tests.support.services import FEEDLINE

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "local"
SCHEMA = schema.shipped_schema()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "local"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns(".feedline-dev"))
    return target


def _manifest(folder: Path) -> Path:
    return folder / "loyalty-special-offers.yaml"


def test_the_example_folder_loads(folder: Path) -> None:
    loaded = load_folder(folder, SCHEMA)
    (sub,) = loaded.subscriptions
    assert sub.subscription.name == "loyalty-special-offers"
    assert sub.subscription.spec.mode == "CronJob"
    assert loaded.secret_value("default", "loyalty-db", "dsn") == (
        "sqlite:///$(FEEDLINE_DEV_STATE_DIR)/loyalty-program.db"
    )
    assert loaded.ignored == ()


def test_other_kinds_are_ignored_and_listed(folder: Path) -> None:
    (folder / "deploy.yml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n---\n"
    )
    assert load_folder(folder, SCHEMA).ignored == (
        f'{folder / "deploy.yml"}: Deployment "web" (apps/v1)',
    )


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda t: t.replace('  schedule: "* * * * *"\n', ""),
            'EventSubscription "loyalty-special-offers": spec.schedule: Required value: '
            "schedule is required when mode is CronJob",
        ),
        (
            lambda t: t.replace("mode: CronJob", "mode: Follow"),
            "spec.schedule: Forbidden: schedule is forbidden when mode is Follow",
        ),
        (lambda t: t.replace("* * * * *", "* * * *"), "spec.schedule: Invalid value"),
        (
            lambda t: t.replace("feedline.dev/v1alpha1", "feedline.dev/v1"),
            'apiVersion: Unsupported value: "feedline.dev/v1/EventSubscription"',
        ),
        (lambda t: t.replace("apiVersion: feedline.dev/v1alpha1\n", ""), "apiVersion: Required"),
        (lambda t: t.replace("batchSize: 500", "batchSize: 0"), "spec.batchSize: Invalid value"),
        (lambda t: t.replace("batchSize:", "batchsize:"), "spec.batchsize: Unknown field"),
        (lambda t: t.replace("key: dsn", "key: url"), 'Secret "loyalty-db" has no key "url"'),
        (
            lambda t: t.replace("name: loyalty-db", "name: other-db"),
            'spec.readModel.databaseSecretRef: Not found: Secret "other-db"',
        ),
        (lambda t: t + "  bad: [unclosed\n", "not valid YAML"),
    ],
)
def test_a_bad_manifest_names_file_and_field(folder: Path, edit: object, expected: str) -> None:
    path = _manifest(folder)
    path.write_text(edit(path.read_text()))  # type: ignore[operator]
    with pytest.raises(ManifestError) as caught:
        load_folder(folder, SCHEMA)
    assert str(caught.value).startswith(str(path)), caught.value
    assert expected in str(caught.value)


def test_service_account_tokens_are_refused_locally(folder: Path) -> None:
    path = _manifest(folder)
    path.write_text(
        path.read_text().replace(
            "    eventTypes:", "    auth: {type: ServiceAccountToken}\n    eventTypes:"
        )
    )
    with pytest.raises(ManifestError, match=r"spec\.feed\.auth\.type: Unsupported value"):
        load_folder(folder, SCHEMA)


def test_duplicate_names_are_refused(folder: Path) -> None:
    shutil.copy(_manifest(folder), folder / "again.yaml")
    with pytest.raises(ManifestError, match=r"metadata\.name: Duplicate value: also defined in"):
        load_folder(folder, SCHEMA)


def run_dev_once(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FEEDLINE, "dev", str(folder), "--once"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_exits_2_naming_the_file_and_the_field(folder: Path) -> None:
    path = _manifest(folder)
    path.write_text(path.read_text().replace("mode: CronJob", "mode: Sometimes"))
    result = run_dev_once(folder)
    assert result.returncode == 2, result
    assert str(path) in result.stderr
    assert 'spec.mode: Unsupported value: "Sometimes": supported values: "CronJob", "Follow"' in (
        result.stderr
    )
    assert not (folder / ".feedline-dev").exists()  # nothing was started


@pytest.mark.parametrize("name", ["FEEDLINE_SUBSCRIBER_FAULT", "FEEDLINE_ANYTHING"])
def test_feedline_variables_in_subscriber_env_exit_2(folder: Path, name: str) -> None:
    """As the API server does: every FEEDLINE_* name is the operator's to render."""
    path = _manifest(folder)
    path.write_text(
        path.read_text()
        + "  subscriber:\n    env:\n      - {name: LOG_LEVEL, value: debug}\n"
        + f"      - {{name: {name}, value: after-fetch@1}}\n"
    )
    result = run_dev_once(folder)
    assert result.returncode == 2, result
    assert str(path) in result.stderr
    assert (
        "spec.subscriber.env[1].name: Forbidden: spec.subscriber.env may not set FEEDLINE_* "
        "variables: the operator sets every FEEDLINE_ variable of the subscriber from the spec"
    ) in result.stderr
    assert not (folder / ".feedline-dev").exists()  # nothing was started


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--output", "yaml"], "--output"),
        (["--port-offset", "x"], "--port-offset"),
        (["--service", "nope"], "--service"),
    ],
)
def test_bad_flags_exit_2(folder: Path, args: list[str], expected: str) -> None:
    result = subprocess.run(
        [FEEDLINE, "dev", str(folder), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert expected in result.stderr


def test_a_missing_folder_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [FEEDLINE, "dev", str(tmp_path / "nope")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert result.returncode == 2
    assert "is not a folder" in result.stderr
