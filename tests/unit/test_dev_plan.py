"""`feedline dev`'s pure part: manifests -> the local processes it starts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from feedline.dev import plan
from feedline.dev.manifests import Folder, LoadedSubscription, Secret, Source
from feedline.dev.plan import Layout
from feedline.dev.schedule import next_run
from feedline.dev.supervisor import base_environment
from feedline_contracts import subscriber_env as env
from feedline_contracts.eventsubscription import EventSubscription
from feedline_operator import builders

pytestmark = pytest.mark.unit

FOLDER_DIR = Path("/work/sample")
LAYOUT = Layout(FOLDER_DIR, FOLDER_DIR / ".feedline-dev")
FEEDLINE = "/venv/bin/feedline"
SOURCE = Source(FOLDER_DIR / "sub.yaml")


def _loaded(**spec: Any) -> LoadedSubscription:
    body: dict[str, Any] = {
        "metadata": {"name": "loyalty-special-offers"},
        "spec": {
            "feed": {"url": "http://special-offers/events", "eventTypes": ["SpecialOfferCreated"]},
            "schedule": "* * * * *",
            "readModel": {
                "databaseSecretRef": {"name": "loyalty-db", "key": "dsn"},
                "projection": "feedline.services.loyalty_program.projection:project_special_offers",
            },
            **spec,
        },
    }
    return LoadedSubscription(SOURCE, EventSubscription.from_body(body))


def _folder(*loaded: LoadedSubscription, **extra: dict[str, str]) -> Folder:
    secrets = {
        ("default", "loyalty-db"): Secret(
            SOURCE,
            "default",
            "loyalty-db",
            {"dsn": "sqlite:///$(FEEDLINE_DEV_STATE_DIR)/loyalty-program.db"},
        )
    }
    for name, data in extra.items():
        secrets["default", name] = Secret(SOURCE, "default", name, data)
    return Folder(FOLDER_DIR, tuple(loaded), secrets)


def test_a_cronjob_subscription_runs_the_rendered_container_locally() -> None:
    loaded = _loaded()
    spec = plan.subscriber_process(loaded, _folder(loaded), LAYOUT, FEEDLINE)
    child = builders.build_child(loaded.subscription, builders.ChildDefaults())
    (container,) = plan.pod_template(child)["spec"]["containers"]
    # The same command and the same variables as the pod the operator renders.
    assert spec.argv == (FEEDLINE, *container["command"][1:])
    assert spec.argv == (FEEDLINE, "subscribe")
    assert set(spec.env) == {e["name"] for e in container["env"]}
    rendered = {e["name"]: e.get("value") for e in container["env"]}
    for name in (env.SUBSCRIPTION, env.PROJECTION, env.EVENT_TYPES, env.BATCH_SIZE):
        assert spec.env[name] == rendered[name]
    # ...with what only exists on this machine mapped to it.
    state = FOLDER_DIR / ".feedline-dev"
    assert spec.env[env.DATABASE_URL] == f"sqlite:///{state}/loyalty-program.db"
    assert spec.env[env.FEED_URL] == "http://127.0.0.1:8001/events"
    termination_log = state / "subscriptions" / "loyalty-special-offers" / "termination-log"
    assert spec.env[env.TERMINATION_LOG] == str(termination_log)
    assert spec.termination_log == termination_log
    assert env.FOLLOW not in spec.env
    assert spec.status_port is None
    assert spec.cwd == FOLDER_DIR
    assert spec.log_path == state / "logs" / "loyalty-special-offers.log"


def test_a_follow_subscription_gets_a_local_status_port() -> None:
    loaded = _loaded(mode="Follow", schedule=None)
    spec = plan.subscriber_process(loaded, _folder(loaded), LAYOUT, FEEDLINE, status_port=45678)
    assert spec.env[env.FOLLOW] == "true"
    assert spec.env[env.STATUS_PORT] == "45678"
    assert spec.status_port == 45678
    once = plan.subscriber_process(loaded, _folder(loaded), LAYOUT, FEEDLINE, once=True)
    assert env.FOLLOW not in once.env
    assert env.STATUS_PORT not in once.env
    with pytest.raises(plan.PlanError, match="status port"):
        plan.subscriber_process(loaded, _folder(loaded), LAYOUT, FEEDLINE)


def test_a_token_secret_volume_becomes_a_local_file() -> None:
    loaded = _loaded(
        feed={
            "url": "http://special-offers.shop.svc.cluster.local/events",
            "auth": {"type": "Token", "secretRef": {"name": "feed", "key": "token"}},
        }
    )
    folder = _folder(loaded, feed={"token": "s3cret"})
    spec = plan.subscriber_process(loaded, folder, LAYOUT, FEEDLINE)
    token_file = Path(spec.env[env.FEED_TOKEN_FILE])
    assert spec.files == {token_file: "s3cret"}
    assert token_file.is_relative_to(LAYOUT.subscription_dir("loyalty-special-offers"))
    assert spec.env[env.FEED_AUTH] == "Token"
    assert spec.env[env.FEED_URL] == "http://127.0.0.1:8001/events"


def test_extra_env_is_expanded_like_the_kubelet_does() -> None:
    loaded = _loaded(subscriber={"env": [{"name": "UPSERT_KEY_FIELD", "value": "$(X)$$(Y)"}]})
    spec = plan.subscriber_process(loaded, _folder(loaded), LAYOUT, FEEDLINE)
    assert spec.env["UPSERT_KEY_FIELD"] == "$(X)$(Y)"
    assert plan.expand("a $(B) $(C) $$", {"B": "b"}) == "a b $(C) $"


def test_a_missing_secret_key_is_a_plan_error() -> None:
    loaded = _loaded(
        readModel={"databaseSecretRef": {"name": "loyalty-db", "key": "nope"}, "projection": "a:b"}
    )
    with pytest.raises(plan.PlanError, match='no key "nope"'):
        plan.subscriber_process(loaded, _folder(loaded), LAYOUT, FEEDLINE)


@pytest.mark.parametrize(
    ("url", "offset", "expected"),
    [
        ("http://special-offers/events", 0, "http://127.0.0.1:8001/events"),
        ("http://special-offers/events?x=1", 100, "http://127.0.0.1:8101/events?x=1"),
        ("http://loyalty-program.shop/events", 0, "http://127.0.0.1:8002/events"),
        ("http://shopping-cart.shop.svc/events", 0, "http://127.0.0.1:8003/events"),
        ("http://product-catalog.a.svc.cluster.local:80/events", 0, "http://127.0.0.1:8004/events"),
        ("http://127.0.0.1:8001/events", 0, "http://127.0.0.1:8001/events"),
        ("http://127.0.0.1:8001/events", 1000, "http://127.0.0.1:9001/events"),
        ("http://localhost:8004/events", 5, "http://localhost:8009/events"),
        ("http://127.0.0.1:9999/events", 5, "http://127.0.0.1:9999/events"),
        ("http://special-offers:9000/events", 0, "http://special-offers:9000/events"),
        ("https://special-offers/events", 0, "https://special-offers/events"),
        (
            "http://special-offers.example.com.evil/events",
            0,
            "http://special-offers.example.com.evil/events",
        ),
        ("http://feeds.example.com/events", 0, "http://feeds.example.com/events"),
    ],
)
def test_local_feed_url(url: str, offset: int, expected: str) -> None:
    layout = Layout(FOLDER_DIR, FOLDER_DIR / "state", port_offset=offset)
    assert plan.local_feed_url(url, layout) == expected


def test_service_process() -> None:
    layout = Layout(FOLDER_DIR, Path("/state"), port_offset=10)
    spec = plan.service_process("shopping-cart", layout, FEEDLINE)
    assert spec.argv == (
        FEEDLINE,
        "serve",
        "shopping-cart",
        "--host",
        "127.0.0.1",
        "--port",
        "8013",
        "--database-url",
        "sqlite:////state/shopping-cart.db",
    )
    assert spec.env["FEEDLINE_PRODUCT_CATALOG_URL"] == "http://127.0.0.1:8014"
    assert spec.env["FEEDLINE_HTTP_CACHE_DIR"] == "/state/http-cache"


def test_children_do_not_inherit_feedline_variables() -> None:
    base = base_environment({"PATH": "/bin", "FEEDLINE_DATABASE_URL": "postgresql://x"})
    assert base == {"PATH": "/bin"}


def test_next_run() -> None:
    now = datetime(2026, 3, 1, 10, 0, 30, tzinfo=UTC)
    assert next_run("* * * * *", now, "UTC") == datetime(2026, 3, 1, 10, 1, tzinfo=UTC)
    assert next_run("0 12 * * *", now, "Europe/Copenhagen") == datetime(
        2026, 3, 1, 11, 0, tzinfo=UTC
    )
    assert next_run("@hourly", now, "UTC") == datetime(2026, 3, 1, 11, 0, tzinfo=UTC)
