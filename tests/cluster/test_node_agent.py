"""The test node agent: environment from the pod spec, restartPolicy Always,
and stopping processes when their pod is deleted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support.kube import apis
from tests.support.kube.node_agent import NodeAgent
from tests.support.wait import wait_for

pytestmark = pytest.mark.cluster


def pod_phase(core: Any, namespace: str, name: str) -> Any:
    return core.read_namespaced_pod(name, namespace).status.phase


def test_env_is_resolved_from_the_pod_spec(
    kube_api: client.ApiClient, namespace: str, node_agent: NodeAgent | None
) -> None:
    core = apis.core(kube_api)
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}}
    )
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"feed": "orders", "LEVEL": "debug"}}
    )
    script = (
        'echo "$TOKEN $FEED $NS $POD $GREETING $APP_LEVEL"'
        ' > "${FEEDLINE_TERMINATION_LOG:-/dev/termination-log}"'
    )
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "env"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": "busybox:1.37",
                        "command": ["sh", "-c", script],
                        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "APP_"}],
                        "env": [
                            {
                                "name": "TOKEN",
                                "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}},
                            },
                            {
                                "name": "FEED",
                                "valueFrom": {
                                    "configMapKeyRef": {"name": "settings", "key": "feed"}
                                },
                            },
                            {
                                "name": "NS",
                                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                            },
                            {
                                "name": "POD",
                                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                            },
                            {"name": "GREETING", "value": "hi-$(POD)"},
                        ],
                    }
                ],
            },
        },
    )

    wait_for(lambda: pod_phase(core, namespace, "env") == "Succeeded", timeout=30, what="pod env")
    (status,) = core.read_namespaced_pod("env", namespace).status.container_statuses
    assert status.state.terminated.message == f"s3cret orders {namespace} env hi-env debug\n"


def test_deleting_a_running_pod_stops_its_process(
    kube_api: client.ApiClient, namespace: str, node_agent: NodeAgent | None
) -> None:
    core = apis.core(kube_api)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "sleeper"},
            "spec": {
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": 5,
                "containers": [
                    {"name": "main", "image": "busybox:1.37", "command": ["sleep", "3600"]}
                ],
            },
        },
    )
    wait_for(lambda: pod_phase(core, namespace, "sleeper") == "Running", timeout=30, what="Running")
    (status,) = core.read_namespaced_pod("sleeper", namespace).status.container_statuses
    assert status.ready

    core.delete_namespaced_pod("sleeper", namespace)

    def deleted() -> bool:
        try:
            core.read_namespaced_pod("sleeper", namespace)
        except apis.ApiException as err:
            return bool(err.status == 404)
        return False

    wait_for(deleted, timeout=30, what="pod deletion to finish")
    if node_agent is not None:  # a local process: check it is gone
        pid = int(status.container_id.removeprefix("local://"))
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_always_restarts_exited_containers(
    kube_api: client.ApiClient, namespace: str, node_agent: NodeAgent | None
) -> None:
    core = apis.core(kube_api)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "flaky"},
            "spec": {
                "restartPolicy": "Always",
                "containers": [
                    {"name": "main", "image": "busybox:1.37", "command": ["sh", "-c", "exit 1"]}
                ],
            },
        },
    )

    def restarted() -> bool:
        statuses = core.read_namespaced_pod("flaky", namespace).status.container_statuses or []
        return bool(statuses) and statuses[0].restart_count >= 1

    wait_for(restarted, timeout=30, what="a container restart")
    assert pod_phase(core, namespace, "flaky") == "Running"


def test_init_containers_run_first_and_on_failure_restarts(
    kube_api: client.ApiClient, namespace: str, node_agent: NodeAgent | None, tmp_path: Path
) -> None:
    if node_agent is None:
        pytest.skip("uses a marker file on this machine: local node agent only")
    core = apis.core(kube_api)
    marker = tmp_path / "failed-once"
    # Fails on the first run only: the marker file outlives the first process.
    flaky = f'if [ -e "{marker}" ]; then exit 0; fi; touch "{marker}"; exit 1'
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "staged"},
            "spec": {
                "restartPolicy": "OnFailure",
                "initContainers": [
                    {"name": "prepare", "image": "busybox:1.37", "command": ["sh", "-c", "exit 0"]}
                ],
                "containers": [
                    {"name": "main", "image": "busybox:1.37", "command": ["sh", "-c", flaky]}
                ],
            },
        },
    )

    wait_for(lambda: pod_phase(core, namespace, "staged") == "Succeeded", timeout=30, what="done")
    status = core.read_namespaced_pod("staged", namespace).status
    (init,) = status.init_container_statuses
    assert init.state.terminated.exit_code == 0
    (main,) = status.container_statuses
    assert main.restart_count == 1
    assert main.state.terminated.exit_code == 0
    assert main.last_state.terminated.exit_code == 1
