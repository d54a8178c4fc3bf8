"""The API server crashes under a running operator, and comes back.

A control plane of its own (etcd, kube-apiserver, kube-controller-manager from
`make controlplane`; not the cluster tier's shared one, which other tests use
at the same time): the operator runs as `feedline operator`, a process, with
its subscriptions Ready. kube-apiserver is killed (SIGKILL, no graceful
shutdown) and kept down long enough for the operator's watches and calls to
fail, then started again on the same port, certificates and etcd. Meanwhile a
subscription's spec is waiting to be changed and new ones to be created: after
the restart the operator must pick both up by itself (its watches re-list),
report status again, and have made no child twice: one CronJob per
subscription, each controlled by it, no Deployment. The operator process must
not have exited (kopf retries the API; a crash loop would only hide in a
Deployment's restarts).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support.kube import apis
from tests.support.kube.binaries import MissingBinariesError, find_binaries
from tests.support.kube.cluster import create_namespace
from tests.support.kube.controlplane import ControlPlane
from tests.support.operator_fixtures import GROUP, PLURAL, VERSION, install_crd, subscription
from tests.support.wait import wait_for

pytestmark = pytest.mark.faults

BEFORE = 8  # Ready before the crash
AFTER = 8  # created once it is back
# Longer than the client's connect retries take to give up on one attempt, so the
# operator sees its watches and calls fail rather than one slow answer.
DOWN_SECONDS = 8


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    try:
        binaries = find_binaries()
    except MissingBinariesError as err:
        pytest.fail(str(err), pytrace=False)  # never skip: `make controlplane` builds them
    with ControlPlane(binaries, tmp_path / "controlplane") as plane:
        yield plane


@pytest.fixture
def kube_api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    api = apis.new_api_client(control_plane.kubeconfig)
    yield api
    apis.close(api)


def _subscriptions(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    listed = apis.custom(api).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    items: list[dict[str, Any]] = listed["items"]
    return items


def _ready(item: dict[str, Any]) -> bool:
    for condition in (item.get("status") or {}).get("conditions") or []:
        if condition["type"] == "Ready":
            return bool(
                condition["status"] == "True"
                and condition.get("observedGeneration") == item["metadata"]["generation"]
            )
    return False


def _all_ready(api: client.ApiClient, namespace: str, count: int) -> bool:
    items = _subscriptions(api, namespace)
    return len(items) == count and all(_ready(item) for item in items)


def test_the_operator_resumes_after_the_api_server_crashes_and_makes_no_child_twice(
    control_plane: ControlPlane, kube_api: client.ApiClient, tmp_path: Path
) -> None:
    install_crd(kube_api)
    namespace = create_namespace(kube_api, "apiserver-restart")
    apis.core(kube_api).create_namespaced_secret(
        namespace,
        {"metadata": {"name": "read-model"}, "stringData": {"dsn": "sqlite:////tmp/unused.db"}},
    )
    log = tmp_path / "operator.log"
    argv = [
        str(Path(sys.executable).with_name("feedline")), "operator",
        "--kubeconfig", str(control_plane.kubeconfig), "--namespace", namespace,
        "--health-port", "0", "--metrics-port", "0", "--log-format", "plain",
    ]  # fmt: skip
    with log.open("wb") as out:
        operator = subprocess.Popen(
            argv, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=out
        )
    try:
        for index in range(BEFORE):
            apis.custom(kube_api).create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, subscription(f"s{index}")
            )
        wait_for(
            lambda: _all_ready(kube_api, namespace, BEFORE),
            timeout=90,
            what=f"{BEFORE} subscriptions Ready before the crash",
        )

        control_plane.kill_apiserver()
        time.sleep(DOWN_SECONDS)
        control_plane.start_apiserver()

        # What the operator must notice by itself once its watches are back.
        apis.custom(kube_api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "s0", {"spec": {"schedule": "30 2 * * *"}}
        )
        for index in range(BEFORE, BEFORE + AFTER):
            apis.custom(kube_api).create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, subscription(f"s{index}")
            )

        def schedule_reached() -> bool:
            cronjob = apis.batch(kube_api).read_namespaced_cron_job("s0", namespace)
            return bool(cronjob.spec.schedule == "30 2 * * *")

        wait_for(
            lambda: _all_ready(kube_api, namespace, BEFORE + AFTER) and schedule_reached(),
            timeout=120,
            what="every subscription Ready (s0's new schedule on its CronJob) after the restart",
        )
        assert operator.poll() is None, f"the operator exited:\n{log.read_text()[-4000:]}"
    finally:
        operator.terminate()
        operator.wait(30)

    names = sorted(f"s{index}" for index in range(BEFORE + AFTER))
    cronjobs = apis.batch(kube_api).list_namespaced_cron_job(namespace).items
    assert sorted(c.metadata.name for c in cronjobs) == names, "one CronJob per subscription"
    uids = {
        item["metadata"]["name"]: item["metadata"]["uid"]
        for item in _subscriptions(kube_api, namespace)
    }
    for cronjob in cronjobs:
        [owner] = [o for o in cronjob.metadata.owner_references or [] if o.controller]
        assert owner.uid == uids[cronjob.metadata.name]
    assert apis.apps(kube_api).list_namespaced_deployment(namespace).items == []
