"""CronJob and Job controllers create Jobs and pods; the node agent runs them
and reports exit codes and termination messages."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.support.kube import apis
from tests.support.kube.cluster import create_namespace, delete_namespace, namespace_name
from tests.support.kube.node_agent import NodeAgent
from tests.support.wait import wait_for

pytestmark = pytest.mark.cluster

CRONJOB = "greeter"
# Writes the pod's name as the termination message; FEEDLINE_TERMINATION_LOG
# is where the local node agent wants it (a real kubelet reads the default).
GREETER = 'echo "hello from $POD_NAME" > "${FEEDLINE_TERMINATION_LOG:-/dev/termination-log}"'


def pod_template(script: str) -> dict[str, Any]:
    return {
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "busybox:1.37",
                    "command": ["sh", "-c", script],
                    "env": [
                        {
                            "name": "POD_NAME",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                        }
                    ],
                }
            ],
        }
    }


def job_spec(script: str) -> dict[str, Any]:
    return {"backoffLimit": 0, "template": pod_template(script)}


@pytest.fixture(scope="module")
def cron_namespace(kube_api: client.ApiClient, node_agent: NodeAgent | None) -> Iterator[str]:
    """Module-wide, so the scheduled Job's wait overlaps the other tests."""
    name = create_namespace(kube_api, namespace_name("cronjobs"))
    apis.batch(kube_api).create_namespaced_cron_job(
        name,
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": CRONJOB},
            "spec": {
                "schedule": "* * * * *",
                "concurrencyPolicy": "Forbid",
                "jobTemplate": {"spec": job_spec(GREETER)},
            },
        },
    )
    yield name
    delete_namespace(kube_api, name)


def finished_condition(job: Any) -> str | None:
    for condition in (job.status.conditions or []) if job.status else []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return str(condition.type)
    return None


def wait_job_finished(api: client.ApiClient, namespace: str, name: str, timeout: float) -> str:
    batch = apis.batch(api)
    return wait_for(
        lambda: finished_condition(batch.read_namespaced_job(name, namespace)),
        timeout=timeout,
        what=f"Job {namespace}/{name} to finish",
    )


def job_pod(api: client.ApiClient, namespace: str, job: str) -> Any:
    pods = apis.core(api).list_namespaced_pod(
        namespace, label_selector=f"batch.kubernetes.io/job-name={job}"
    )
    assert len(pods.items) == 1, [p.metadata.name for p in pods.items]
    return pods.items[0]


def terminated(pod: Any) -> Any:
    (status,) = pod.status.container_statuses
    assert status.state.terminated is not None, status.state
    return status.state.terminated


def test_job_from_cronjob_template_runs_at_once(
    kube_api: client.ApiClient, cron_namespace: str
) -> None:
    batch = apis.batch(kube_api)
    cronjob = batch.read_namespaced_cron_job(CRONJOB, cron_namespace)
    # What `kubectl create job --from=cronjob/greeter` sends.
    template = apis.to_dict(kube_api, cronjob.spec.job_template)
    batch.create_namespaced_job(
        cron_namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": "greeter-manual",
                "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "CronJob",
                        "name": CRONJOB,
                        "uid": cronjob.metadata.uid,
                        "controller": True,
                    }
                ],
            },
            "spec": copy.deepcopy(template["spec"]),
        },
    )

    assert wait_job_finished(kube_api, cron_namespace, "greeter-manual", timeout=60) == "Complete"
    pod = job_pod(kube_api, cron_namespace, "greeter-manual")
    assert pod.status.phase == "Succeeded"
    result = terminated(pod)
    assert (result.exit_code, result.reason) == (0, "Completed")
    assert result.message == f"hello from {pod.metadata.name}\n"


def test_failing_job_reports_exit_code_and_message(
    kube_api: client.ApiClient, namespace: str, node_agent: NodeAgent | None
) -> None:
    script = (
        'echo "cursor 42 is gone" > "${FEEDLINE_TERMINATION_LOG:-/dev/termination-log}"; exit 3'
    )
    apis.batch(kube_api).create_namespaced_job(
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "fails"},
            "spec": job_spec(script),
        },
    )

    assert wait_job_finished(kube_api, namespace, "fails", timeout=60) == "Failed"
    pod = job_pod(kube_api, namespace, "fails")
    assert pod.status.phase == "Failed"
    result = terminated(pod)
    assert (result.exit_code, result.reason) == (3, "Error")
    assert result.message == "cursor 42 is gone\n"


def test_cronjob_schedule_creates_a_job_that_completes(
    kube_api: client.ApiClient, cron_namespace: str
) -> None:
    batch = apis.batch(kube_api)

    def scheduled_job() -> str | None:
        for job in batch.list_namespaced_job(cron_namespace).items:
            annotations = job.metadata.annotations or {}
            owners = job.metadata.owner_references or []
            if "cronjob.kubernetes.io/instantiate" not in annotations and any(
                o.kind == "CronJob" and o.name == CRONJOB for o in owners
            ):
                return str(job.metadata.name)
        return None

    # The schedule has minute granularity; the controller checks every ~10 s.
    job = wait_for(scheduled_job, timeout=80, interval=1, what="a scheduled Job")
    assert wait_job_finished(kube_api, cron_namespace, job, timeout=60) == "Complete"
    pod = job_pod(kube_api, cron_namespace, job)
    assert terminated(pod).message == f"hello from {pod.metadata.name}\n"

    def last_successful() -> Any:
        return batch.read_namespaced_cron_job(CRONJOB, cron_namespace).status.last_successful_time

    wait_for(last_successful, timeout=30, what="CronJob lastSuccessfulTime")
