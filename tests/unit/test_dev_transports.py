"""`feedline dev` and the transports: gRPC feed addresses, the broker, the feed check's ports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from feedline.dev import broker, plan
from feedline.dev.feeds import feed_port, left_out_service, serving_service, unserved_feed_line
from feedline.dev.manifests import Folder, LoadedSubscription, Secret, Source
from feedline.dev.plan import Layout
from feedline_contracts import subscriber_env as env
from feedline_contracts.broker import BROKER_URL_SETTING
from feedline_contracts.eventsubscription import EventSubscription
from feedline_contracts.feed import GRPC_PORT, GRPC_PORT_SETTING

pytestmark = pytest.mark.unit

DIR = Path("/work/sample")
FEEDLINE = "/venv/bin/feedline"
SOURCE = Source(DIR / "sub.yaml")
ALL = ("special-offers", "loyalty-program", "shopping-cart", "product-catalog")
GRPC_PORTS = {
    "special-offers": 41001,
    "loyalty-program": 41002,
    "shopping-cart": 41003,
    "product-catalog": 41004,
}
LAYOUT = Layout(DIR, DIR / ".feedline-dev", port_offset=100, grpc_ports=GRPC_PORTS)
LOCAL_BROKER = "rabbitmq-stream://guest:guest@127.0.0.1:45552/%2F"


# --- feed URLs: grpc:// of a cluster service is that service's local gRPC port -------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("grpc://special-offers", "grpc://127.0.0.1:41001"),
        ("grpc://special-offers:9090", "grpc://127.0.0.1:41001"),
        ("grpc://loyalty-program.shop:9090", "grpc://127.0.0.1:41002"),
        ("grpc://shopping-cart.shop.svc/", "grpc://127.0.0.1:41003/"),
        ("grpc://product-catalog.a.svc.cluster.local", "grpc://127.0.0.1:41004"),
        # Not the chart's gRPC port: something else, left as written.
        ("grpc://special-offers:9091", "grpc://special-offers:9091"),
        # TLS: the local services serve plaintext; left as written (like https://).
        ("grpcs://special-offers", "grpcs://special-offers"),
        ("grpcs://special-offers:9090", "grpcs://special-offers:9090"),
        # A loopback gRPC URL is not an HTTP port to shift by --port-offset.
        ("grpc://127.0.0.1:8001", "grpc://127.0.0.1:8001"),
        ("grpc://feeds.example.com:9090", "grpc://feeds.example.com:9090"),
        # HTTP as before, next to gRPC.
        ("http://special-offers/events", "http://127.0.0.1:8101/events"),
        ("http://127.0.0.1:8001/events", "http://127.0.0.1:8101/events"),
    ],
)
def test_grpc_feed_urls_are_mapped_like_http_ones(url: str, expected: str) -> None:
    assert plan.local_feed_url(url, LAYOUT) == expected


def test_without_a_grpc_port_a_grpc_url_is_left_as_written() -> None:
    layout = Layout(DIR, DIR / ".feedline-dev")
    assert plan.local_feed_url("grpc://special-offers:9090", layout) == (
        "grpc://special-offers:9090"
    )


def test_an_ipv6_host_is_bracketed_in_the_grpc_address() -> None:
    layout = Layout(DIR, DIR / "s", host="::1", grpc_ports={"special-offers": 41001})
    assert layout.service_grpc_url("special-offers") == "grpc://[::1]:41001"
    assert plan.local_feed_url("grpc://special-offers", layout) == "grpc://[::1]:41001"


# --- the processes -------------------------------------------------------------------


def test_a_service_serves_grpc_on_its_port_and_publishes_to_the_broker() -> None:
    layout = Layout(DIR, Path("/state"), grpc_ports=GRPC_PORTS, broker_url=LOCAL_BROKER)
    spec = plan.service_process("shopping-cart", layout, FEEDLINE)
    assert spec.env[GRPC_PORT_SETTING] == "41003"
    assert spec.env[BROKER_URL_SETTING] == LOCAL_BROKER
    # Without either, neither variable: no gRPC server, no relay.
    bare = plan.service_process("shopping-cart", Layout(DIR, Path("/state")), FEEDLINE)
    assert GRPC_PORT_SETTING not in bare.env
    assert BROKER_URL_SETTING not in bare.env


def _subscription(feed: dict[str, Any]) -> LoadedSubscription:
    body = {
        "metadata": {"name": "offers"},
        "spec": {
            "feed": feed,
            "mode": "Follow",
            "readModel": {
                "databaseSecretRef": {"name": "db", "key": "dsn"},
                "projection": "feedline.services.loyalty_program.projection:project_special_offers",
            },
        },
    }
    return LoadedSubscription(SOURCE, EventSubscription.from_body(body))


def _folder(loaded: LoadedSubscription) -> Folder:
    secrets = {
        ("default", "db"): Secret(SOURCE, "default", "db", {"dsn": "sqlite:///x.db"}),
        ("default", "rabbitmq"): Secret(
            SOURCE,
            "default",
            "rabbitmq",
            {"url": "rabbitmq-stream://app:s3cret@rabbitmq.messaging.svc:5552/feedline"},
        ),
    }
    return Folder(DIR, (loaded,), secrets)


def test_a_grpc_subscriber_reads_the_local_grpc_port() -> None:
    loaded = _subscription({"url": f"grpc://special-offers:{GRPC_PORT}"})
    spec = plan.subscriber_process(loaded, _folder(loaded), LAYOUT, FEEDLINE, status_port=1)
    assert spec.env[env.FEED_URL] == "grpc://127.0.0.1:41001"
    assert not plan.needs_broker(loaded)


def test_a_broker_subscriber_reads_the_local_broker_whatever_host_its_secret_names() -> None:
    loaded = _subscription(
        {
            "url": "http://special-offers/events",
            "broker": {
                "urlSecretRef": {"name": "rabbitmq", "key": "url"},
                "stream": "feedline.events.special-offers",
            },
        }
    )
    assert plan.needs_broker(loaded)
    assert plan.folder_needs_broker([loaded])
    layout = Layout(DIR, DIR / "s", grpc_ports=GRPC_PORTS, broker_url=LOCAL_BROKER)
    spec = plan.subscriber_process(loaded, _folder(loaded), layout, FEEDLINE, status_port=1)
    # The same variables as the rendered container; the broker is the one dev runs.
    _, container = plan.rendered_container(loaded)
    assert set(spec.env) == {e["name"] for e in container["env"]}
    assert spec.env[env.BROKER_URL] == LOCAL_BROKER
    assert spec.env[env.BROKER_STREAM] == "feedline.events.special-offers"
    assert spec.env[env.FEED_URL] == "http://127.0.0.1:8001/events"
    # Validation (no broker yet): the Secret's value, resolved like any secretKeyRef.
    checked = plan.subscriber_process(loaded, _folder(loaded), LAYOUT, FEEDLINE, status_port=1)
    assert checked.env[env.BROKER_URL].startswith("rabbitmq-stream://app:s3cret@rabbitmq.")


# --- the feed check: ports per scheme -----------------------------------------------


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("http://special-offers/events", 80),
        ("https://special-offers/events", 443),
        ("grpc://special-offers", GRPC_PORT),
        ("grpcs://special-offers", 443),
        ("http://special-offers:8080/events", 8080),
        ("grpc://special-offers:7000", 7000),
        ("grpcs://special-offers:9443", 9443),
        ("ftp://special-offers/events", None),
        ("http://special-offers:notaport/events", None),
    ],
)
def test_the_port_a_feed_url_connects_to(url: str, port: int | None) -> None:
    assert feed_port(url) == port


@pytest.mark.parametrize(
    ("url", "served_by"),
    [
        ("grpc://127.0.0.1:41001", "special-offers"),
        ("grpc://localhost:41004", "product-catalog"),
        ("grpc://127.0.0.1:8101", None),  # the HTTP port does not speak gRPC
        ("http://127.0.0.1:41001/events", None),  # the gRPC port does not speak HTTP
        ("grpcs://127.0.0.1:41001", None),  # the local services serve no TLS
        ("grpc://127.0.0.1", None),  # 9090 by default: no service here
        ("http://127.0.0.1:8102/events", "loyalty-program"),
    ],
)
def test_which_service_serves_a_grpc_or_http_url(url: str, served_by: str | None) -> None:
    assert serving_service(url, LAYOUT, ALL) == served_by


def test_a_url_without_a_port_uses_its_schemes_default_port() -> None:
    # special-offers on 80 (offset -7921) and with its gRPC feed on 9090.
    layout = Layout(DIR, DIR / "s", port_offset=-7921, grpc_ports={"special-offers": GRPC_PORT})
    assert serving_service("http://127.0.0.1/events", layout, ALL) == "special-offers"
    assert serving_service("http://127.0.0.1:8080/events", layout, ALL) is None
    assert serving_service("grpc://127.0.0.1", layout, ALL) == "special-offers"
    assert serving_service("grpc://127.0.0.1:80", layout, ALL) is None


def test_a_grpc_feed_of_a_service_left_out_names_it() -> None:
    url = "grpc://127.0.0.1:41001"
    assert left_out_service(url, LAYOUT, ("loyalty-program",)) == "special-offers"
    line = unserved_feed_line("offers", "sub.yaml", url, LAYOUT, ("loyalty-program",))
    assert line.endswith("special-offers is left out by --service: add --service special-offers")


def test_without_rabbitmq_server_the_error_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker, "RABBITMQ_SERVER", tmp_path / "rabbitmq-server")
    node = broker.RabbitMQNode(tmp_path / "node", owned=True)
    with pytest.raises(broker.BrokerError) as raised:
        node.launch()
    assert "apt-get install rabbitmq-server" in str(raised.value)
    assert "spec.feed.broker" in str(raised.value)
    assert node.process is None
