"""`helm upgrade` of both releases with changed values, as users change them:
each change reaches what it configures, what the install generated (the
database password, the feed token) stays, and the demo keeps working.
Runs after the other demo tests and before `helm uninstall` (conftest)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tests.e2e.actions import post_offer, register_user, request_run_now, wait_ready
from tests.e2e.clients import http_json
from tests.e2e.conftest import CHARTS, Demo
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

NEW_SCHEDULE = "*/2 * * * *"


def release_secrets(demo: Demo) -> dict[str, dict[str, str]]:
    secrets = demo.cluster.kubectl_json(
        "-n", demo.namespace, "get", "secrets", "-l", "app.kubernetes.io/instance=e2e-demo"
    )["items"]
    return {s["metadata"]["name"]: s["data"] for s in secrets}


def operator_args(demo: Demo) -> list[str]:
    deployment: dict[str, Any] = demo.cluster.kubectl_json(
        "-n", demo.operator_namespace, "get", "deployment", "-l",
        "app.kubernetes.io/name=feedline-operator",
    )["items"][0]  # fmt: skip
    return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])


def test_helm_upgrade_with_changed_values(demo: Demo) -> None:
    wait_ready(demo)
    secrets = release_secrets(demo)
    assert secrets, "the demo release has no Secrets"

    demo.cluster.helm(
        "upgrade", "e2e-operator", str(CHARTS / "feedline-operator"),
        "--namespace", demo.operator_namespace, "--reuse-values",
        "--set", "resyncSeconds=45", "--set", "logFormat=plain",
        "--wait", "--timeout", "5m",
    )  # fmt: skip
    args = operator_args(demo)
    assert "--resync-seconds=45" in args, args
    assert "--log-format=plain" in args, args

    demo.cluster.helm(
        "upgrade", "e2e-demo", str(demo.chart), "--namespace", demo.namespace,
        "--reuse-values", "--set", f"subscriptions.loyaltySpecialOffers.schedule={NEW_SCHEDULE}",
        "--wait", "--timeout", "5m",
    )  # fmt: skip
    # The subscription's new schedule reaches its CronJob through the operator.
    wait_for(
        lambda: (
            demo.kubectl(
                "get", "cronjob", "loyalty-special-offers", "-o", "jsonpath={.spec.schedule}"
            )
            == NEW_SCHEDULE
        ),
        timeout=60,
        interval=1,
        what=f"the CronJob's schedule {NEW_SCHEDULE!r}",
    )
    # Generated at install, kept on upgrade: the services and subscribers keep
    # their database password and the feed its token.
    assert release_secrets(demo) == secrets

    # Still working end to end, under the upgraded operator.
    wait_ready(demo)
    user = register_user(demo, "upgrade")
    description = f"after upgrade {uuid.uuid4().hex[:8]}"
    post_offer(demo, description)
    request_run_now(demo, f"upgrade-{int(time.time())}")
    loyalty_url = demo.url("loyalty-program")

    def arrived() -> bool:
        status, offers = http_json("GET", f"{loyalty_url}/users/{user['id']}/offers")
        assert status == 200, offers
        return description in {offer["description"] for offer in offers}

    wait_for(arrived, timeout=120, interval=1, what="the offer in loyalty-program's read model")
