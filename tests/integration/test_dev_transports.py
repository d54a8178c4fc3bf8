"""`feedline dev` over the other transports: a gRPC feed, and a RabbitMQ stream through a broker
that `feedline dev` starts itself (real services, real subscriber processes, real RabbitMQ).

The example folder (examples/local) is copied and its subscription changed as a
user would: ``feed.url: grpc://special-offers:9090`` (the cluster address of the
service's gRPC feed), or ``feed.broker`` with a Secret naming an in-cluster
broker. Offers posted to special-offers must reach the loyalty program's read
model through that transport.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from feedline_contracts.broker import stream_name
from feedline_subscriber.feed_transport import MAX_BACKOFF_SECONDS
from tests.integration.test_dev_local_mode import (
    SUBSCRIPTION,
    Dev,
    _offers,
    _post_offers,
    _register_user,
    copy_example,
    dev_starter,
    free_port_offset,
    services_ready,
)
from tests.support.rabbitmq import RabbitMQNode, StreamReader
from tests.support.services import FEEDLINE
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

TRANSPORTS_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "local-transports"

FEED = "url: http://special-offers/events"
# What a cluster's Secret would hold: the broker's in-cluster address, other credentials.
CLUSTER_BROKER_URL = "rabbitmq-stream://feedline:s3cret@rabbitmq.messaging.svc:5552/feedline"
BROKER_SECRET = f"""
---
apiVersion: v1
kind: Secret
metadata:
  name: rabbitmq
stringData:
  url: {CLUSTER_BROKER_URL}
"""


@pytest.fixture
def start_dev(tmp_path: Path) -> Iterator[Callable[..., Dev]]:
    with dev_starter(tmp_path) as start:
        yield start


def _document(dev: Dev) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        (dev.folder / ".feedline-dev" / "status.json").read_text()
    )
    return document


def _subscriber_log(dev: Dev) -> str:
    path = dev.folder / ".feedline-dev" / "logs" / f"{SUBSCRIPTION}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _stop_and_check_nothing_is_left(dev: Dev) -> None:
    children = list(psutil.Process(dev.process.pid).children(recursive=True))
    dev.process.send_signal(signal.SIGTERM)
    assert dev.process.wait(timeout=60) == 0, dev.log()
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], alive


def _three_offers_reach_the_read_model(dev: Dev) -> list[dict[str, Any]]:
    with httpx.Client(timeout=10) as http:
        user = _register_user(http, dev)
        _post_offers(http, dev, "10% off books", "2 for 1 coffee", "free shipping")

        def three() -> list[dict[str, Any]] | None:
            offers = _offers(http, dev, user)
            return offers if len(offers) == 3 else None

        return wait_for(three, what="three offers in the read model", timeout=60)


def test_a_grpc_subscription_reads_the_local_services_grpc_feed(
    tmp_path: Path, start_dev: Callable[..., Dev]
) -> None:
    folder = copy_example(tmp_path, mode="Follow")
    manifest = folder / f"{SUBSCRIPTION}.yaml"
    manifest.write_text(manifest.read_text().replace(FEED, "url: grpc://special-offers:9090"))
    dev = start_dev(folder, "--service", "special-offers", "--service", "loyalty-program")
    wait_for(lambda: services_ready(dev), what="the services")
    document = _document(dev)
    grpc_url = document["services"]["special-offers"]["grpcUrl"]
    assert grpc_url.startswith("grpc://127.0.0.1:"), document
    assert document["services"]["loyalty-program"]["grpcUrl"] != grpc_url
    # Shown where the HTTP URL is shown, and the subscription's feed is that address.
    assert f"special-offers {dev.url('special-offers')} {grpc_url}" in dev.log()
    wait_for(lambda: (s := dev.status()) and s["state"] == "Following", what="the follower")
    status = dev.status()
    assert status is not None
    assert status["feed"] == grpc_url
    offers = _three_offers_reach_the_read_model(dev)
    assert [o["description"] for o in offers] == [
        "10% off books",
        "2 for 1 coffee",
        "free shipping",
    ]
    caught_up = wait_for(
        lambda: (s := dev.status()) and s["position"] == 3 and s, what="the follower's summary"
    )
    assert (caught_up["head"], caught_up["lag"]) == (3, 0), caught_up
    assert "no service feedline dev runs serves it" not in dev.log()
    # No subscription reads through a broker: no broker is started.
    assert "broker" not in _document(dev)
    assert not (folder / ".feedline-dev" / "rabbitmq").exists()
    _stop_and_check_nothing_is_left(dev)


def test_a_broker_subscription_makes_dev_start_a_broker_and_reads_through_it(
    tmp_path: Path, start_dev: Callable[..., Dev]
) -> None:
    folder = copy_example(tmp_path, mode="Follow")
    manifest = folder / f"{SUBSCRIPTION}.yaml"
    stream = stream_name("special-offers")
    manifest.write_text(
        manifest.read_text().replace(
            FEED,
            f"{FEED}\n    broker:\n      urlSecretRef: {{name: rabbitmq, key: url}}\n"
            f"      stream: {stream}",
        )
    )
    secrets = folder / "secrets.yaml"
    secrets.write_text(secrets.read_text() + BROKER_SECRET)
    dev = start_dev(folder, "--service", "special-offers", "--service", "loyalty-program")
    wait_for(lambda: services_ready(dev), what="the services and the broker", timeout=90)
    assert "broker ready: rabbitmq-stream://" in dev.log(), dev.log()
    broker = _document(dev)["broker"]
    assert broker["state"] == "Ready", broker
    local_url = broker["url"]
    assert local_url.startswith("rabbitmq-stream://guest:guest@127.0.0.1:"), broker
    stream_port = int(local_url.rsplit(":", 1)[1].split("/", 1)[0])
    wait_for(lambda: (s := dev.status()) and s["state"] == "Following", what="the follower")

    offers = _three_offers_reach_the_read_model(dev)
    assert [o["description"] for o in offers][-1] == "free shipping"
    caught_up = wait_for(
        lambda: (s := dev.status()) and s["position"] == 3 and s, what="the follower's summary"
    )
    assert (caught_up["head"], caught_up["lag"]) == (3, 0), caught_up
    # Through the local node: the service's relay published there, the subscriber read it
    # (not the Secret's in-cluster broker, which does not exist here). A follower that
    # started before the relay created the stream read the first offers over HTTP (the
    # fallback) and tries the broker again within MAX_BACKOFF_SECONDS: a later offer
    # comes through the stream.
    posted = 3
    with httpx.Client(timeout=10) as http:
        deadline = time.monotonic() + 2 * MAX_BACKOFF_SECONDS + 10
        while "reading from the stream" not in _subscriber_log(dev):
            assert time.monotonic() < deadline, _subscriber_log(dev)[-3000:]
            posted += 1
            _post_offers(http, dev, f"through the stream? {posted}")
            wait_for(
                lambda n=posted: (s := dev.status()) and s["position"] == n,  # type: ignore[misc]
                what="the new offer",
            )
            time.sleep(1)
    node = RabbitMQNode(Path(broker["log"]).parent, stream_port=stream_port)

    async def published() -> list[int]:
        async with StreamReader(node, stream) as reader:
            await reader.wait_for_sequence(3, within=30)
            return reader.sequence_numbers

    assert asyncio.run(published())[:3] == [1, 2, 3]
    assert "rabbitmq.messaging.svc" not in _subscriber_log(dev)

    # The broker (its VM and epmd) stops with feedline dev.
    _stop_and_check_nothing_is_left(dev)
    assert _document(dev)["broker"]["state"] == "Stopped"
    # Every event was read once, from the stream or (before the follower reached it)
    # from the HTTP feed, and the last ones from the stream.
    (closed,) = [
        line
        for line in map(_json_line, _subscriber_log(dev).splitlines())
        if line.get("event") == "broker transport closed"
    ]
    assert closed["events_from_stream"] + closed["events_from_http"] == posted, closed
    assert closed["events_from_stream"] >= 1, closed


def _json_line(line: str) -> dict[str, Any]:
    try:
        loaded = json.loads(line)
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def test_the_transports_example_runs_once_through_its_broker(tmp_path: Path) -> None:
    folder = tmp_path / "local-transports"
    shutil.copytree(TRANSPORTS_EXAMPLE, folder, ignore=shutil.ignore_patterns(".feedline-dev"))
    result = subprocess.run(
        [
            FEEDLINE,
            "dev",
            str(folder),
            "--once",
            "--output",
            "json",
            "--service",
            "special-offers",
            "--service",
            "loyalty-program",
            "--port-offset",
            str(free_port_offset()),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert result.returncode == 0, result.stderr
    assert "broker ready: rabbitmq-stream://guest:guest@127.0.0.1:" in result.stderr
    document = json.loads(result.stdout)
    (status,) = document["subscriptions"]
    assert (status["name"], status["outcome"]) == (SUBSCRIPTION, "CaughtUp"), status
    assert document["broker"]["url"].startswith("rabbitmq-stream://guest:guest@127.0.0.1:")
    # The folder's Secret named an in-cluster broker: the run used the local node.
    log = (folder / ".feedline-dev" / "logs" / f"{SUBSCRIPTION}.log").read_text()
    assert '"transport": "rabbitmq"' in log
    assert "rabbitmq.messaging.svc" not in log
