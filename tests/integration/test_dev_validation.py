"""`feedline dev` checks the whole folder before anything starts, and says everything at once.

The command in process (CliRunner, as test_dev_invalid_manifests): every bad
manifest is reported (file, object, field), each DSN a subscription reads from
a Secret is parsed as the subscriber will parse it, and a folder without any
EventSubscription says where it looked and where to look instead. Exit 2,
nothing started.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from feedline.cli import app
from feedline.dev import schema
from feedline.dev.main import DevOptions, load
from feedline.dev.manifests import FolderError, ManifestError, load_folder
from feedline_contracts.database import ACCEPTED_URLS

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "local"
SUBSCRIPTION = "loyalty-special-offers"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "local"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns(".feedline-dev"))
    return target


def _dev(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(app, ["dev", *args, "--once"], env={"COLUMNS": "400"})
    return result.exit_code, result.stderr.splitlines()


def _with_dsn(folder: Path, dsn: str) -> Path:
    secrets = folder / "secrets.yaml"
    text = secrets.read_text()
    old = "sqlite:///$(FEEDLINE_DEV_STATE_DIR)/loyalty-program.db"
    secrets.write_text(text.replace(old, json.dumps(dsn)))
    return secrets


def _second_subscription(folder: Path, name: str, edit: str) -> Path:
    manifest = folder / f"{name}.yaml"
    text = (folder / f"{SUBSCRIPTION}.yaml").read_text().replace(SUBSCRIPTION, name)
    manifest.write_text(text.replace("mode: CronJob", edit))
    return manifest


def test_every_problem_of_the_folder_is_reported_at_once(folder: Path) -> None:
    second = _second_subscription(folder, "other-offers", "mode: Sometimes")
    third = _second_subscription(folder, "third-offers", "mode: CronJob")
    third.write_text(third.read_text().replace("key: dsn", "key: url"))
    fourth = _second_subscription(folder, "fourth-offers", "mode: CronJob")
    fourth.write_text(fourth.read_text().replace('"* * * * *"', '"* * * *"'))
    secrets = _with_dsn(folder, "mysql://app:s3cret@db/loyalty")
    (folder / "broken.yaml").write_text("kind: [unclosed\n")
    code, lines = _dev(str(folder))
    assert code == 2, lines
    expected = [
        f"feedline dev: {folder / 'broken.yaml'}: line ",
        f'feedline dev: {fourth}: EventSubscription "fourth-offers": spec.schedule: Invalid value',
        f'feedline dev: {second}: EventSubscription "other-offers": spec.mode: Unsupported value',
        f'feedline dev: {third}: EventSubscription "third-offers": '
        'spec.readModel.databaseSecretRef: Not found: Secret "loyalty-db" has no key "url"',
        f'feedline dev: {secrets}: Secret "loyalty-db": stringData[dsn]: Invalid value: '
        "unsupported database URL scheme 'mysql'",
    ]
    for start in expected:
        assert any(line.startswith(start) for line in lines), (start, lines)
    assert lines[-1] == "feedline dev: 5 problems; nothing started"
    assert len(lines) == 6, lines
    assert not (folder / ".feedline-dev").exists()


def test_all_problems_of_one_object_each_name_the_file(folder: Path) -> None:
    manifest = folder / f"{SUBSCRIPTION}.yaml"
    manifest.write_text(
        manifest.read_text()
        .replace("mode: CronJob", "mode: Sometimes")
        .replace("onPoisonEvent: Halt", "onPoisonEvent: Maybe")
    )
    with pytest.raises(FolderError) as caught:
        load_folder(folder, schema.shipped_schema())
    prefix = f'{manifest}: EventSubscription "{SUBSCRIPTION}": '
    assert caught.value.lines() == [
        prefix + 'spec.mode: Unsupported value: "Sometimes": supported values: "CronJob", "Follow"',
        prefix + 'spec.onPoisonEvent: Unsupported value: "Maybe": supported values: '
        '"DeadLetter", "Halt"',
    ]


@pytest.mark.parametrize(
    ("dsn", "said"),
    [
        ("mysql://app:s3cret@db/loyalty", "unsupported database URL scheme 'mysql'"),
        ("postgresql://app:s3cret@db", "names no database"),
        ("sqlite:///:memory:", "needs a file path"),
        ("sqlite://", "needs a file path"),
        ("not a database url", "not a database URL"),
        ("sqlite:///$(FEEDLINE_DEV_DIR)/missing/read-model.db", "missing of the SQLite file"),
    ],
)
def test_a_bad_dsn_is_refused_at_load_naming_secret_and_key(
    folder: Path, dsn: str, said: str
) -> None:
    secrets = _with_dsn(folder, dsn)
    code, lines = _dev(str(folder))
    assert code == 2, lines
    (line,) = lines
    assert line.startswith(f'feedline dev: {secrets}: Secret "loyalty-db": stringData[dsn]: '), line
    assert said in line
    assert f"expected {ACCEPTED_URLS}" in line
    assert f'EventSubscription "{SUBSCRIPTION}", spec.readModel.databaseSecretRef' in line
    assert "s3cret" not in line  # the password is not shown
    assert not (folder / ".feedline-dev").exists()


def test_a_dsn_in_data_is_named_by_its_data_key(folder: Path) -> None:
    encoded = base64.b64encode(b"postgres://app:s3cret@db").decode()
    (folder / "secrets.yaml").write_text(
        f"apiVersion: v1\nkind: Secret\nmetadata: {{name: loyalty-db}}\ndata: {{dsn: {encoded}}}\n"
    )
    code, lines = _dev(str(folder))
    assert code == 2, lines
    assert 'Secret "loyalty-db": data[dsn]: Invalid value: ' in lines[0]
    assert "***" in lines[0]
    assert "s3cret" not in lines[0]


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:s3cret@db.example:5432/loyalty",  # not connected to at load
        "sqlite:///$(FEEDLINE_DEV_STATE_DIR)/loyalty-program.db",  # the state directory
        "sqlite:///read-model.db",  # relative to the folder
    ],
)
def test_good_dsns_load(folder: Path, dsn: str) -> None:
    _with_dsn(folder, dsn)
    loaded, _ = load(DevOptions(directory=folder), Console(stderr=True))
    assert [s.subscription.name for s in loaded.subscriptions] == [SUBSCRIPTION]


def test_a_folder_without_subscriptions_says_where_it_looked_and_where_they_are(
    tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `feedline dev` in a project's root, whose manifests are two levels down.
    root = tmp_path
    (root / "kind-config.yaml").write_text("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\n")
    nested = root / "deploy" / "local"
    nested.parent.mkdir()
    shutil.move(folder, nested)
    monkeypatch.chdir(root)
    code, lines = _dev(".")
    assert code == 2, lines
    assert lines == [
        f"feedline dev: {root}: no EventSubscription manifest here (feedline dev reads the "
        "*.yaml and *.yml files directly in this folder, not its subfolders; it read 1: "
        "kind-config.yaml)",
        f"feedline dev: {root}: EventSubscription manifests found in subfolders: run "
        "feedline dev deploy/local",
    ]
    assert not (root / ".feedline-dev").exists()


def test_an_empty_folder_says_how_to_point_feedline_dev(tmp_path: Path) -> None:
    code, lines = _dev(str(tmp_path))
    assert code == 2
    assert lines[0].startswith(f"feedline dev: {tmp_path}: no EventSubscription manifest here")
    assert "there are none" in lines[0]
    assert lines[1] == (
        f"feedline dev: {tmp_path}: point it at the folder of your manifests: feedline dev DIR "
        "(in the Feedline repository, the sample: feedline dev examples/local)"
    )
    with pytest.raises(ManifestError):
        load(DevOptions(directory=tmp_path), Console(stderr=True))
