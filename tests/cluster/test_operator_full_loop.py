"""The full loop: a real special-offers service on loopback, an EventSubscription,
the CronJob controller's Job, the pod run by the node agent with exactly the
rendered command and env, the read model filled, and the status written back."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client

from feedline_contracts.eventsubscription import EventSubscription
from feedline_operator import builders
from tests.cluster.test_operator import (  # the operator fixtures, shared
    condition,
    create,
    get,
    operator_config,
    operator_kubeconfig,
)
from tests.support.kube import apis
from tests.support.kube.node_agent import NodeAgent
from tests.support.operator_fixtures import OperatorThread, subscription
from tests.support.services import running_service
from tests.support.wait import wait_for

pytestmark = pytest.mark.cluster

__all__ = ["operator_kubeconfig"]  # a module-scoped fixture, used below

OFFERS = ["Half-price coffee", "Free delivery", "Two for one"]


@pytest.fixture
def special_offers(tmp_path: Path) -> Iterator[str]:
    with running_service("special-offers", f"sqlite:///{tmp_path / 'offers.db'}") as base_url:
        for description in OFFERS:
            httpx.post(f"{base_url}/offers", json={"description": description}).raise_for_status()
        yield base_url


def test_cronjob_runs_the_subscriber_and_the_status_shows_it(
    kube_api: client.ApiClient,
    namespace: str,
    operator_kubeconfig: Path,
    node_agent: NodeAgent | None,
    special_offers: str,
    tmp_path: Path,
    kubectl: Path,
    kubeconfig: Path,
) -> None:
    assert node_agent is not None, "the full loop runs pods through the local node agent"
    read_model = tmp_path / "loyalty.db"
    apis.core(kube_api).create_namespaced_secret(
        namespace,
        {"metadata": {"name": "read-model"}, "stringData": {"dsn": f"sqlite:///{read_model}"}},
    )
    body = subscription(
        "offers",
        feed={"url": f"{special_offers}/events"},
        # Every minute: the CronJob controller itself starts the Job.
        schedule="* * * * *",
        batchSize=2,
    )
    with OperatorThread(operator_config(operator_kubeconfig, namespace)):
        created = create(kube_api, namespace, body)
        selector = "feedline.dev/subscription=offers"

        def finished_job() -> Any:
            jobs = apis.batch(kube_api).list_namespaced_job(namespace, label_selector=selector)
            return [j for j in jobs.items if (j.status.succeeded or 0) >= 1]

        (job,) = wait_for(finished_job, timeout=100, what="a Job of the CronJob to succeed")
        assert job.metadata.owner_references[0].kind == "CronJob"

        def caught_up() -> dict[str, Any] | None:
            found = get(kube_api, namespace, "offers")
            ok = condition(found, "CaughtUp").get("status") == "True"
            return found if ok and condition(found, "Ready").get("status") == "True" else None

        status_body = wait_for(caught_up, timeout=30, what="status CaughtUp and Ready")

    status = status_body["status"]
    assert status["position"] == len(OFFERS)
    assert status["head"] == len(OFFERS)
    assert status["lag"] == 0
    assert status["lastRun"]["outcome"] == "CaughtUp"
    assert status["lastRun"]["processed"] == len(OFFERS)
    assert condition(status_body, "Stalled")["status"] == "False"

    # The pod ran exactly the rendered command and env.
    pods = apis.core(kube_api).list_namespaced_pod(namespace, label_selector=selector).items
    pod = next(p for p in pods if p.status.phase == "Succeeded")
    container = apis.to_dict(kube_api, pod.spec.containers[0])
    expected = builders.subscriber_container(
        EventSubscription.from_body(created), builders.ChildDefaults()
    )
    assert container["command"] == expected["command"] == ["feedline", "subscribe"]
    assert container["env"] == expected["env"]

    # The read model holds the offers.
    with sqlite3.connect(read_model) as db:
        rows = db.execute("SELECT description FROM loyalty_special_offers ORDER BY offer_id")
        assert [r[0] for r in rows] == OFFERS

    # kubectl shows the printer columns.
    table = subprocess.run(
        [str(kubectl), f"--kubeconfig={kubeconfig}", "-n", namespace, "get", "evsub"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "FEED", "MODE", "SCHEDULE", "POSITION", "LAG", "READY", "AGE"]
    assert row.split()[:2] == ["offers", f"{special_offers}/events"]
    cells = row.split()
    assert cells[2] == "CronJob"
    assert cells[-4:-1] == [str(len(OFFERS)), "0", "True"]
