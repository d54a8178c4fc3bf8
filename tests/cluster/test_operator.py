"""The operator against the real control plane, running in-process with ONLY the
permissions of its chart's ServiceAccount (a TokenRequest token, not admin)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from feedline_operator.compare import differences
from feedline_operator.config import OperatorConfig
from tests.support.kube import apis
from tests.support.operator_fixtures import (
    DATA,
    GROUP,
    PLURAL,
    VERSION,
    OperatorThread,
    load_yaml,
    sample,
    subscription,
)
from tests.support.wait import wait_for

pytestmark = pytest.mark.cluster

# Drift must be put back "within seconds".
DRIFT_SECONDS = 10


def operator_config(kubeconfig: Path, namespace: str) -> OperatorConfig:
    return OperatorConfig(
        kubeconfig=str(kubeconfig),
        namespaces=(namespace,),
        health_port=0,
        metrics_port=0,
        resync_seconds=5,
        follow_poll_seconds=2,
    )


@pytest.fixture
def operator(operator_kubeconfig: Path, namespace: str) -> Iterator[OperatorThread]:
    with OperatorThread(operator_config(operator_kubeconfig, namespace)) as running:
        yield running


@pytest.fixture
def read_model_secret(kube_api: client.ApiClient, namespace: str) -> str:
    apis.core(kube_api).create_namespaced_secret(
        namespace,
        {"metadata": {"name": "read-model"}, "stringData": {"dsn": "sqlite:////tmp/unused.db"}},
    )
    return "read-model"


# --- helpers ----------------------------------------------------------------------


def create(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = apis.custom(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    return created


def get(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = apis.custom(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return found


def patch_spec(api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> None:
    apis.custom(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": spec}
    )


def condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    for found in (body.get("status") or {}).get("conditions") or []:
        if found["type"] == type_:
            return dict(found)
    return {}


def wait_condition(
    api: client.ApiClient,
    namespace: str,
    name: str,
    type_: str,
    value: str,
    *,
    generation: int | None = None,
    timeout: float = 20,
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        body = get(api, namespace, name)
        found = condition(body, type_)
        if found.get("status") != value:
            return None
        if generation is not None and found.get("observedGeneration") != generation:
            return None
        return body

    return wait_for(probe, timeout=timeout, what=f"{name} {type_}={value}")


def cronjob(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found = apis.batch(api).read_namespaced_cron_job(name, namespace)
    except apis.ApiException as err:
        if err.status == 404:
            return None
        raise
    return dict(apis.to_dict(api, found))


def deployment(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found = apis.apps(api).read_namespaced_deployment(name, namespace)
    except apis.ApiException as err:
        if err.status == 404:
            return None
        raise
    return dict(apis.to_dict(api, found))


def warning_events(api: client.ApiClient, namespace: str, name: str) -> list[Any]:
    events = apis.core(api).list_namespaced_event(namespace).items
    return [e for e in events if e.type == "Warning" and e.involved_object.name == name]


def golden_subscription() -> dict[str, Any]:
    body = sample("subscription-cronjob")
    body["metadata"] = {"name": body["metadata"]["name"]}
    return body


# --- tests ------------------------------------------------------------------------


@pytest.mark.usefixtures("operator")
def test_create_makes_the_golden_cronjob_and_ready(
    kube_api: client.ApiClient, namespace: str
) -> None:
    apis.core(kube_api).create_namespaced_secret(
        namespace, {"metadata": {"name": "loyalty-db"}, "stringData": {"dsn": "sqlite:///x.db"}}
    )
    created = create(kube_api, namespace, golden_subscription())
    name = created["metadata"]["name"]
    live = wait_for(lambda: cronjob(kube_api, namespace, name), timeout=20, what="CronJob")
    golden = copy.deepcopy(load_yaml(DATA / "cronjob.golden.yaml"))
    golden["metadata"]["namespace"] = namespace
    golden["metadata"]["ownerReferences"][0]["uid"] = created["metadata"]["uid"]
    assert differences(golden, live) == []
    body = wait_condition(kube_api, namespace, name, "Ready", "True", generation=1)
    status = body["status"]
    assert status["observedGeneration"] == 1
    assert (status["childKind"], status["childName"]) == ("CronJob", name)
    assert condition(body, "CaughtUp")["reason"] == "NoRunYet"


@pytest.mark.usefixtures("operator", "read_model_secret")
def test_update_patches_the_cronjob(kube_api: client.ApiClient, namespace: str) -> None:
    create(kube_api, namespace, subscription("s"))
    wait_condition(kube_api, namespace, "s", "Ready", "True")
    first_uid = wait_for(lambda: cronjob(kube_api, namespace, "s"), timeout=10)["metadata"]["uid"]
    patch_spec(kube_api, namespace, "s", {"schedule": "*/7 * * * *", "batchSize": 50})

    def patched() -> dict[str, Any] | None:
        found = cronjob(kube_api, namespace, "s")
        return found if found and found["spec"]["schedule"] == "*/7 * * * *" else None

    live = wait_for(patched, timeout=20, what="CronJob patched")
    assert live["metadata"]["uid"] == first_uid  # patched in place, not recreated
    env = live["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "FEEDLINE_BATCH_SIZE", "value": "50"} in env
    body = wait_condition(kube_api, namespace, "s", "Ready", "True", generation=2)
    assert body["status"]["observedGeneration"] == 2


@pytest.mark.usefixtures("operator", "read_model_secret")
def test_suspend_reaches_the_cronjob(kube_api: client.ApiClient, namespace: str) -> None:
    create(kube_api, namespace, subscription("s"))
    wait_for(lambda: cronjob(kube_api, namespace, "s"), timeout=20)
    patch_spec(kube_api, namespace, "s", {"suspend": True})
    wait_for(
        lambda: (cronjob(kube_api, namespace, "s") or {}).get("spec", {}).get("suspend"),
        timeout=20,
        what="CronJob suspended",
    )
    patch_spec(kube_api, namespace, "s", {"suspend": False})
    wait_for(
        lambda: (cronjob(kube_api, namespace, "s") or {}).get("spec", {}).get("suspend") is False,
        timeout=20,
        what="CronJob resumed",
    )


@pytest.mark.usefixtures("operator", "read_model_secret")
def test_mode_switch_replaces_the_child(kube_api: client.ApiClient, namespace: str) -> None:
    create(kube_api, namespace, subscription("s"))
    wait_for(lambda: cronjob(kube_api, namespace, "s"), timeout=20, what="CronJob")
    apis.custom(kube_api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "s",
        [{"op": "replace", "path": "/spec/mode", "value": "Follow"},
         {"op": "remove", "path": "/spec/schedule"}],
        _content_type="application/json-patch+json",
    )  # fmt: skip
    live = wait_for(lambda: deployment(kube_api, namespace, "s"), timeout=20, what="Deployment")
    assert live["spec"]["replicas"] == 1
    assert live["spec"]["strategy"]["type"] == "Recreate"
    wait_for(lambda: cronjob(kube_api, namespace, "s") is None, timeout=20, what="CronJob gone")
    body = wait_condition(kube_api, namespace, "s", "Ready", "True", generation=2)
    assert body["status"]["childKind"] == "Deployment"
    patch_spec(kube_api, namespace, "s", {"mode": "CronJob", "schedule": "0 0 1 1 *"})
    wait_for(lambda: cronjob(kube_api, namespace, "s"), timeout=20, what="CronJob back")
    wait_for(
        lambda: deployment(kube_api, namespace, "s") is None, timeout=20, what="Deployment gone"
    )


@pytest.mark.usefixtures("operator", "read_model_secret")
def test_delete_garbage_collects_the_children(kube_api: client.ApiClient, namespace: str) -> None:
    create(kube_api, namespace, subscription("s"))
    wait_for(lambda: cronjob(kube_api, namespace, "s"), timeout=20, what="CronJob")
    apis.custom(kube_api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "s")
    # The garbage collector learns new resource types (this CRD) on its discovery
    # resync, every 30 s; on a fresh control plane that can add half a minute.
    wait_for(lambda: cronjob(kube_api, namespace, "s") is None, timeout=75, what="CronJob GC")


@pytest.mark.usefixtures("operator", "read_model_secret")
def test_child_deleted_by_hand_is_restored(kube_api: client.ApiClient, namespace: str) -> None:
    create(kube_api, namespace, subscription("s"))
    uid = wait_for(lambda: cronjob(kube_api, namespace, "s"), timeout=20)["metadata"]["uid"]
    apis.batch(kube_api).delete_namespaced_cron_job("s", namespace)

    def restored() -> dict[str, Any] | None:
        found = cronjob(kube_api, namespace, "s")
        return found if found and found["metadata"]["uid"] != uid else None

    wait_for(restored, timeout=DRIFT_SECONDS, what="CronJob recreated")


@pytest.mark.usefixtures("operator", "read_model_secret")
def test_child_edited_by_hand_is_restored(kube_api: client.ApiClient, namespace: str) -> None:
    create(kube_api, namespace, subscription("s"))
    wait_for(lambda: cronjob(kube_api, namespace, "s"), timeout=20)
    apis.batch(kube_api).patch_namespaced_cron_job(
        "s", namespace, {"spec": {"schedule": "* * * * *", "concurrencyPolicy": "Allow"}}
    )

    def restored() -> bool:
        spec = (cronjob(kube_api, namespace, "s") or {}).get("spec", {})
        return bool(
            spec.get("schedule") == "0 0 1 1 *" and spec.get("concurrencyPolicy") == "Forbid"
        )

    wait_for(restored, timeout=DRIFT_SECONDS, what="CronJob put back")


@pytest.mark.usefixtures("operator")
def test_missing_secret_is_not_ready_with_a_warning_until_it_appears(
    kube_api: client.ApiClient, namespace: str
) -> None:
    create(kube_api, namespace, subscription("s"))
    body = wait_condition(kube_api, namespace, "s", "Ready", "False")
    ready = condition(body, "Ready")
    assert ready["reason"] == "SecretNotFound"
    assert "read-model" in ready["message"]
    wait_for(
        lambda: any(e.reason == "SecretNotFound" for e in warning_events(kube_api, namespace, "s")),
        timeout=20,
        what="Warning Event SecretNotFound",
    )
    # Other subscriptions are served meanwhile.
    apis.core(kube_api).create_namespaced_secret(
        namespace, {"metadata": {"name": "other"}, "stringData": {"dsn": "sqlite:///o.db"}}
    )
    other = subscription("other")
    other["spec"]["readModel"]["databaseSecretRef"]["name"] = "other"
    create(kube_api, namespace, other)
    wait_condition(kube_api, namespace, "other", "Ready", "True")
    apis.core(kube_api).create_namespaced_secret(
        namespace, {"metadata": {"name": "read-model"}, "stringData": {"dsn": "sqlite:///r.db"}}
    )
    wait_condition(kube_api, namespace, "s", "Ready", "True", timeout=30)


@pytest.mark.usefixtures("operator", "read_model_secret")
def test_broker_subscription_gets_its_url_by_reference_and_waits_for_its_secret(
    kube_api: client.ApiClient, namespace: str
) -> None:
    """spec.feed.broker: the child's pod reads FEEDLINE_BROKER_URL from the Secret key and
    FEEDLINE_BROKER_STREAM as a value; until that Secret exists, Ready=False names it."""
    broker = {
        "urlSecretRef": {"name": "rabbitmq-credentials", "key": "url"},
        "stream": "feedline.events.special-offers",
    }
    create(
        kube_api,
        namespace,
        subscription("s", feed={"url": "http://special-offers/events", "broker": broker}),
    )
    body = wait_condition(kube_api, namespace, "s", "Ready", "False")
    ready = condition(body, "Ready")
    assert ready["reason"] == "SecretNotFound"
    assert "feed.broker.urlSecretRef: Secret rabbitmq-credentials not found" in ready["message"]

    child = wait_for(lambda: cronjob(kube_api, namespace, "s"), timeout=20, what="CronJob")
    (container,) = child["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["FEEDLINE_BROKER_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "rabbitmq-credentials", "key": "url"}
    }
    assert env["FEEDLINE_BROKER_STREAM"]["value"] == "feedline.events.special-offers"

    apis.core(kube_api).create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "rabbitmq-credentials"},
            "stringData": {"url": "rabbitmq-stream://feedline:secret@rabbitmq:5552/%2F"},
        },
    )
    wait_condition(kube_api, namespace, "s", "Ready", "True", timeout=30)


def request_run_now(api: client.ApiClient, namespace: str, name: str, request: str) -> None:
    """`kubectl annotate evsub NAME feedline.dev/run-now=REQUEST`."""
    apis.custom(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name,
        {"metadata": {"annotations": {"feedline.dev/run-now": request}}},
    )  # fmt: skip


def wait_run_now_cleared(api: client.ApiClient, namespace: str, name: str) -> None:
    wait_for(
        lambda: (
            "feedline.dev/run-now"
            not in (get(api, namespace, name)["metadata"].get("annotations") or {})
        ),
        timeout=20,
        what="annotation cleared",
    )


@pytest.mark.usefixtures("read_model_secret")
def test_run_now_creates_a_job_and_clears_the_annotation(
    kube_api: client.ApiClient, namespace: str, operator_kubeconfig: Path
) -> None:
    # No resync during the test: only the annotation's own update may start the Job.
    config = dataclasses.replace(
        operator_config(operator_kubeconfig, namespace), resync_seconds=600
    )
    with OperatorThread(config):
        _run_now_creates_a_job_and_clears_the_annotation(kube_api, namespace)


def _run_now_creates_a_job_and_clears_the_annotation(
    kube_api: client.ApiClient, namespace: str
) -> None:
    create(kube_api, namespace, subscription("s"))
    wait_for(lambda: cronjob(kube_api, namespace, "s"), timeout=20)
    request_run_now(kube_api, namespace, "s", "first")
    selector = "feedline.dev/subscription=s"
    # Within 5 s (docs/eventsubscription.md: "within seconds"); the resync timer
    # is 600 s here, so only the annotation's own update can start the Job.
    jobs = wait_for(
        lambda: apis.batch(kube_api).list_namespaced_job(namespace, label_selector=selector).items,
        timeout=5,
        interval=0.1,
        what="run-now Job",
    )
    assert len(jobs) == 1
    assert jobs[0].metadata.annotations["feedline.dev/run-now-request"] == "first"
    spec = jobs[0].spec.template.spec
    assert spec.containers[0].command == ["feedline", "subscribe"]
    wait_run_now_cleared(kube_api, namespace, "s")


@pytest.mark.usefixtures("read_model_secret")
def test_run_now_waits_for_a_run_in_progress_then_starts(
    kube_api: client.ApiClient, namespace: str, operator_kubeconfig: Path
) -> None:
    """A run started beside a running one would exit Locked and apply nothing: the
    operator waits for the running pod to finish, then creates the run-now Job."""
    config = dataclasses.replace(
        operator_config(operator_kubeconfig, namespace), resync_seconds=600
    )
    with OperatorThread(config):
        create(kube_api, namespace, subscription("s"))
        child = wait_for(lambda: cronjob(kube_api, namespace, "s"), timeout=20)
        labels = child["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        core = apis.core(kube_api)
        # The scheduled run's pod, as a kubelet would report it (this tier has none).
        running = "s-29936671-abcde"
        core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": running, "labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "subscriber", "image": "feedline:0.1.0"}],
                },
            },
        )
        core.patch_namespaced_pod_status(running, namespace, {"status": {"phase": "Running"}})
        request_run_now(kube_api, namespace, "s", "after")

        def waiting_events() -> list[Any]:
            events = core.list_namespaced_event(namespace).items
            return [e for e in events if e.reason == "RunNowWaiting"]

        (event, *_) = wait_for(waiting_events, timeout=10, interval=0.1, what="RunNowWaiting")
        assert running in event.message
        selector = "feedline.dev/subscription=s"

        def jobs() -> list[Any]:
            return list(
                apis.batch(kube_api).list_namespaced_job(namespace, label_selector=selector).items
            )

        assert jobs() == []
        annotations = get(kube_api, namespace, "s")["metadata"].get("annotations") or {}
        assert annotations.get("feedline.dev/run-now") == "after"
        # The run in progress ends: the run asked for starts now (the resync is 600 s away).
        core.patch_namespaced_pod_status(running, namespace, {"status": {"phase": "Succeeded"}})
        (job,) = wait_for(jobs, timeout=10, interval=0.1, what="the run-now Job")
        assert job.metadata.annotations["feedline.dev/run-now-request"] == "after"
        wait_run_now_cleared(kube_api, namespace, "s")


def test_operator_killed_mid_reconcile_converges_without_duplicates(
    kube_api: client.ApiClient, namespace: str, operator_kubeconfig: Path, read_model_secret: str
) -> None:
    count = 20
    argv = [
        str(Path(sys.executable).with_name("feedline")), "operator",
        "--kubeconfig", str(operator_kubeconfig), "--namespace", namespace,
        "--health-port", "0", "--metrics-port", "0", "--log-format", "plain",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for index in range(count):
        body = subscription(f"s{index}")
        body["metadata"]["annotations"] = {"feedline.dev/run-now": "once"}
        create(kube_api, namespace, body)
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill it (SIGKILL: no cleanup) as soon as it has made some children, not all.
        wait_for(
            lambda: apis.batch(kube_api).list_namespaced_cron_job(namespace).items,
            timeout=60,
            interval=0.02,
            what="first CronJob",
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    made = len(apis.batch(kube_api).list_namespaced_cron_job(namespace).items)
    second = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def converged() -> bool:
            items = apis.custom(kube_api).list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL
            )["items"]
            return len(items) == count and all(
                condition(i, "Ready").get("status") == "True"
                and "feedline.dev/run-now" not in (i["metadata"].get("annotations") or {})
                for i in items
            )

        wait_for(converged, timeout=90, what="every subscription Ready after the restart")
    finally:
        second.terminate()
        second.wait(30)
    cronjobs = apis.batch(kube_api).list_namespaced_cron_job(namespace).items
    assert sorted(c.metadata.name for c in cronjobs) == sorted(f"s{i}" for i in range(count))
    jobs = apis.batch(kube_api).list_namespaced_job(namespace).items
    per_owner = [j.metadata.labels["feedline.dev/subscription"] for j in jobs]
    assert sorted(per_owner) == sorted(f"s{i}" for i in range(count)), "one run-now Job each"
    print(json.dumps({"children_before_kill": made, "total": count}))


def test_the_operator_logs_the_one_schema_with_the_object_it_acted_on(
    kube_api: client.ApiClient,
    namespace: str,
    operator_kubeconfig: Path,
    read_model_secret: str,
    tmp_path: Path,
) -> None:
    """`feedline operator --log-format json`: kopf's lines too have level (not severity),
    logger, timestamp and event, and name the EventSubscription as ``object``."""
    argv = [
        str(Path(sys.executable).with_name("feedline")), "operator",
        "--kubeconfig", str(operator_kubeconfig), "--namespace", namespace,
        "--health-port", "0", "--metrics-port", "0", "--log-format", "json",
    ]  # fmt: skip
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=out
        )
    try:
        create(kube_api, namespace, subscription("logged"))
        wait_condition(kube_api, namespace, "logged", "Ready", "True")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert lines
    assert all({"timestamp", "level", "logger", "event"} <= line.keys() for line in lines), lines
    assert not any("severity" in line for line in lines)
    about = [line for line in lines if (line.get("object") or {}).get("name") == "logged"]
    assert about, lines[-20:]
    assert all(line["object"]["namespace"] == namespace for line in about)
