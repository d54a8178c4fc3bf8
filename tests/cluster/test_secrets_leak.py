"""Secrets never leak through the operator (the integration part: tests/integration/
test_secrets_leak.py).

`feedline operator` (a real process, with its chart's permissions, on a real API
server) reconciles EventSubscriptions whose Secrets hold canaries: a read
model DSN with a password, a feed token and a broker URL with a password, in
``stringData`` and in ``data``; one subscription names a Secret key that is
missing and one a Secret that does not exist (the warning paths), and one is
in Follow mode. Searched: the operator's log (DEBUG), every EventSubscription's
status, every Kubernetes Event of the namespace, and the children it made
(CronJobs and Deployments must refer to the Secrets, never copy their values).
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support.kube import apis
from tests.support.operator_fixtures import (
    GROUP,
    PLURAL,
    VERSION,
    subscription,
)
from tests.support.secret_canaries import Canaries, Outputs
from tests.support.wait import wait_for

pytestmark = pytest.mark.cluster

FEEDLINE = str(Path(sys.executable).with_name("feedline"))


def _status(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = apis.custom(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return body.get("status") or {}


def _ready(status: dict[str, Any]) -> str | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            return str(condition.get("status"))
    return None


def test_the_operator_leaks_no_secret(
    kube_api: client.ApiClient, namespace: str, operator_kubeconfig: Path, tmp_path: Path
) -> None:
    canaries = Canaries()
    outputs = Outputs(canaries)
    dsn = f"postgresql://reader:{canaries.db_password}@db:5432/loyalty"
    broker = f"rabbitmq-stream://feedline:{canaries.broker_password}@rabbitmq:5552/%2F"
    core = apis.core(kube_api)
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": "read-model"}, "stringData": {"dsn": dsn}},
    )
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "feed-credentials"},
            "data": {
                "token": base64.b64encode(canaries.feed_token.encode()).decode(),
                "url": base64.b64encode(broker.encode()).decode(),
            },
        },
    )
    token = {"type": "Token", "secretRef": {"name": "feed-credentials", "key": "token"}}
    feed = {"url": "http://special-offers/events", "auth": token}
    bodies = {
        "cron": subscription("cron", feed=feed),
        "follow": subscription("follow", feed=feed, mode="Follow"),
        "broker": subscription(
            "broker",
            feed={
                **feed,
                "broker": {
                    "urlSecretRef": {"name": "feed-credentials", "key": "url"},
                    "stream": "feedline.events.special-offers",
                },
            },
        ),
        "missing-key": subscription(
            "missing-key",
            feed={
                "url": "http://special-offers/events",
                "auth": {**token, "secretRef": {"name": "feed-credentials", "key": "absent"}},
            },
        ),
        "missing-secret": subscription(
            "missing-secret",
            readModel={
                "databaseSecretRef": {"name": "not-there", "key": "dsn"},
                "projection": "feedline.services.loyalty_program.projection:project_special_offers",
            },
        ),
    }
    del bodies["follow"]["spec"]["schedule"]
    argv = [
        FEEDLINE, "operator", "--kubeconfig", str(operator_kubeconfig), "--namespace", namespace,
        "--health-port", "0", "--metrics-port", "0", "--log-format", "json",
    ]  # fmt: skip
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "FEEDLINE_LOG_LEVEL": "DEBUG"},
            stdout=out,
            stderr=out,
        )
    try:
        for body in bodies.values():
            apis.custom(kube_api).create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, body
            )
        expected = {"cron": "True", "follow": "True", "broker": "True"}
        expected |= {"missing-key": "False", "missing-secret": "False"}
        for name, ready in expected.items():

            def reached(name: str = name, ready: str = ready) -> bool:
                return _ready(_status(kube_api, namespace, name)) == ready

            wait_for(reached, timeout=60, what=f"{name} Ready={ready}")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    outputs.add_file("operator log", log)
    for name in bodies:
        outputs.add(f"{name} status", repr(_status(kube_api, namespace, name)))
    for event in core.list_namespaced_event(namespace).items:
        outputs.add("Kubernetes Events", f"{event.reason}: {event.message}\n")
    batch, app = apis.batch(kube_api), client.AppsV1Api(kube_api)
    for cronjob in batch.list_namespaced_cron_job(namespace).items:
        outputs.add(
            f"CronJob {cronjob.metadata and cronjob.metadata.name}", repr(cronjob.to_dict())
        )
    for deployment in app.list_namespaced_deployment(namespace).items:
        outputs.add(
            f"Deployment {deployment.metadata and deployment.metadata.name}",
            repr(deployment.to_dict()),
        )
    assert any(key.startswith("CronJob") for key in outputs.texts), outputs.texts.keys()
    assert any("SecretNotFound" in text for text in outputs.texts.values()), "no warning path"
    outputs.assert_no_leak()
