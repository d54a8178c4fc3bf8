"""The demo as users run it: both charts installed with helm, subscriptions
Ready, offers posted to special-offers reaching loyalty-program's read model."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.actions import (
    RUN_NOW_PROMPT_SECONDS,
    evsub_status,
    post_offer,
    register_user,
    request_run_now,
    wait_ready,
)
from tests.e2e.clients import http_json, retry_http
from tests.e2e.conftest import Demo
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e


def test_subscriptions_become_ready(demo: Demo) -> None:
    wait_ready(demo)
    names = demo.kubectl("get", "evsub", "-o", "name").split()
    assert sorted(names) == [
        "eventsubscription.feedline.dev/loyalty-special-offers",
        "eventsubscription.feedline.dev/offer-documents",
    ]
    # Every pod of both charts runs under the restricted profile (enforced by
    # the namespaces' labels: a violating pod would not exist at all).
    pods = demo.cluster.kubectl_json("-n", demo.namespace, "get", "pods")["items"]
    assert pods, "no pods in the demo namespace"
    print(f"helm install --wait took {demo.install_seconds}")


def test_demo_starts_without_restarts(demo: Demo) -> None:
    """`helm install --wait` of the demo with its default values (only the
    node's image names differ) on a cluster without a StorageClass: every pod
    Ready with no container restarted (the services wait for PostgreSQL rather
    than crash), and no subscriber run failed."""
    if demo.cluster.on_node:
        assert demo.cluster.kubectl("get", "storageclass", "-o", "name").strip() == ""
    pods = demo.cluster.kubectl_json("-n", demo.namespace, "get", "pods")["items"]
    restarted = {
        p["metadata"]["name"]: c["restartCount"]
        for p in pods
        for c in p["status"].get("containerStatuses", [])
        if c["restartCount"]
    }
    assert restarted == {}, f"containers restarted: {restarted}"
    failed = [p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Failed"]
    assert failed == [], f"pods failed: {failed}"
    # Long-running pods must be Ready; a subscriber run's pod (a Job's) runs to
    # completion and may be starting at this moment (the demo's CronJob fires every
    # minute): its failure is what counts, checked above.
    workloads = [
        p
        for p in pods
        if p["status"].get("phase") != "Succeeded"
        and not any(o["kind"] == "Job" for o in p["metadata"].get("ownerReferences", []))
    ]
    not_ready = [
        p["metadata"]["name"]
        for p in workloads
        if not any(
            c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"]
        )
    ]
    assert not_ready == [], f"pods not Ready: {not_ready}"


def test_offers_reach_loyalty_read_model(demo: Demo) -> None:
    wait_ready(demo)
    offers_url = demo.url("special-offers")
    loyalty_url = demo.url("loyalty-program")
    # Through the Services' ClusterIPs, from the host (kube-proxy's rules).
    user = register_user(demo, "e2e")
    marker = uuid.uuid4().hex[:8]
    wanted = {f"e2e offer {marker} #{i}" for i in range(3)}
    for description in sorted(wanted):
        status, body = retry_http("POST", f"{offers_url}/offers", {"description": description})
        assert status == 201, body
    # Run the CronJob subscription now rather than wait for its minute.
    demo.kubectl(
        "annotate", "evsub", "loyalty-special-offers", "--overwrite",
        f"feedline.dev/run-now={int(time.time())}",
    )  # fmt: skip

    def arrived() -> bool:
        status, offers = http_json("GET", f"{loyalty_url}/users/{user['id']}/offers")
        assert status == 200, offers
        return wanted <= {offer["description"] for offer in offers}

    # The minute's scheduled run brings them at the latest.
    wait_for(arrived, timeout=150, interval=1, what="offers in loyalty-program's read model")

    def caught_up() -> dict[str, Any] | None:
        status = evsub_status(demo, "loyalty-special-offers")
        return status if status.get("position", 0) >= 3 and status.get("lag") == 0 else None

    # The run's summary (its container's termination message) reaches status.
    status_now = wait_for(caught_up, timeout=90, interval=1, what="position and lag 0 in status")
    assert status_now["lastRun"]["outcome"] == "CaughtUp", status_now


def test_cronjob_run_now_summary_in_status(demo: Demo) -> None:
    """`feedline.dev/run-now` starts a Job at once (not at the operator's resync),
    and that run's summary reaches status from its container's termination message."""
    wait_ready(demo)
    post_offer(demo, f"run-now {uuid.uuid4().hex[:8]}")
    request = f"e2e-{uuid.uuid4().hex[:8]}"
    request_run_now(demo, request)

    def run_now_job() -> str | None:
        jobs = demo.cluster.kubectl_json("-n", demo.namespace, "get", "jobs")["items"]
        for job in jobs:
            annotations = job["metadata"].get("annotations") or {}
            if annotations.get("feedline.dev/run-now-request") == request:
                return str(job["metadata"]["name"])
        return None

    asked = time.monotonic()
    # resyncSeconds (60) and some slack: run-now must work at all.
    job = wait_for(run_now_job, timeout=75, interval=0.25, what=f"a Job for run-now {request}")
    delay = time.monotonic() - asked

    def summary_of_job() -> dict[str, Any] | None:
        status = evsub_status(demo, "loyalty-special-offers")
        last = status.get("lastRun") or {}
        return status if str(last.get("name", "")).startswith(f"{job}-") else None

    status = wait_for(summary_of_job, timeout=90, interval=1, what=f"status.lastRun from {job}")
    assert status["lag"] == 0, status
    assert status["lastRun"]["outcome"] == "CaughtUp", status
    # The resync timer is 60 s: a Job this soon came from the annotation's own update
    # (docs/eventsubscription.md promises it within seconds).
    assert delay < RUN_NOW_PROMPT_SECONDS, f"run-now's Job came {delay:.0f}s after the annotation"


def test_follow_status_moves_within_seconds(demo: Demo) -> None:
    """Follow mode: `kubectl get evsub` shows position and lag move within
    seconds of a command (the operator reads the follower over its pod IP)."""
    wait_ready(demo)

    def position() -> int | None:
        value = demo.kubectl("get", "evsub", "offer-documents", "-o", "jsonpath={.status.position}")
        return int(value) if value else None

    before = position() or 0
    post_offer(demo, f"follow {uuid.uuid4().hex[:8]}")
    began = time.monotonic()
    wait_for(
        lambda: (position() or 0) > before,
        timeout=20,
        interval=0.5,
        what="offer-documents' status.position to move",
    )
    print(f"Follow position moved {time.monotonic() - began:.1f}s after the command")
    columns = demo.kubectl("get", "evsub", "offer-documents")
    assert "offer-documents" in columns


READER = """
import json, os, urllib.error, urllib.request
request = urllib.request.Request("http://product-catalog/events")
path = "/var/run/secrets/feedline/token"
if os.path.exists(path):
    request.add_header("Authorization", "Bearer " + open(path).read().strip())
try:
    print(urllib.request.urlopen(request, timeout=10).status)
except urllib.error.HTTPError as err:
    print(err.code)
    print(json.loads(err.read()).get("detail", ""))
"""


def reader_pod(
    name: str, *, with_token: bool, service_account: str | None = None
) -> dict[str, Any]:
    """A restricted-profile pod that GETs product-catalog's feed once: prints the status,
    and for a refusal the problem's detail. It runs as ``service_account`` (else the
    namespace's ``default``)."""
    container: dict[str, Any] = {
        "name": "reader",
        "image": "feedline:0.1.0",
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-c", READER],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    volumes = []
    if with_token:
        container["volumeMounts"] = [
            {"name": "feed-token", "mountPath": "/var/run/secrets/feedline", "readOnly": True}
        ]
        volumes = [
            {
                "name": "feed-token",
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": "feedline",
                                "path": "token",
                                "expirationSeconds": 600,
                            }
                        }
                    ]
                },
            }
        ]
    spec: dict[str, Any] = {"serviceAccountName": service_account} if service_account else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            **spec,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": volumes,
        },
    }


def test_feed_auth_service_account_token(demo: Demo, tmp_path: Path) -> None:
    """product-catalog with feedAuth.mode=ServiceAccountToken and feedAuth.readers naming
    the namespace's `default` ServiceAccount (helm upgrade): a pod running as it, with a
    projected token (audience `feedline`), reads the feed through TokenReview (200); a pod
    of another ServiceAccount, its token just as valid, gets 403 naming that ServiceAccount
    and not the readers; a pod without a token gets 401."""
    reader = f"system:serviceaccount:{demo.namespace}:default"
    demo.cluster.helm(
        "upgrade", "e2e-demo", str(demo.chart), "--namespace", demo.namespace,
        "--reuse-values", "--set", "productCatalog.feedAuth.mode=ServiceAccountToken",
        "--set", f"productCatalog.feedAuth.readers={{{reader}}}",
        "--wait", "--timeout", "5m",
    )  # fmt: skip
    suffix = uuid.uuid4().hex[:6]
    other = f"not-a-reader-{suffix}"
    pods = {
        f"reader-token-{suffix}": (["200"], True, None),
        f"reader-other-{suffix}": (
            [
                "403",
                f"system:serviceaccount:{demo.namespace}:{other} may not read this feed: "
                "it is not among the feed's readers",
            ],
            True,
            other,
        ),
        f"reader-none-{suffix}": (
            ["401", "this feed needs an Authorization: Bearer token"],
            False,
            None,
        ),
    }
    manifest = tmp_path / "readers.yaml"
    manifest.write_text(
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": other},
                    "automountServiceAccountToken": False,
                },
                *(
                    reader_pod(name, with_token=token, service_account=account)
                    for name, (_, token, account) in pods.items()
                ),
            ]
        )
    )
    demo.kubectl("apply", "-f", str(manifest))
    try:
        for name, (expected, _, _) in pods.items():
            demo.kubectl(
                "wait", "--for=jsonpath={.status.phase}=Succeeded", f"pod/{name}",
                "--timeout=120s", timeout=130,
            )  # fmt: skip
            printed = demo.kubectl("logs", name)
            assert printed.strip().splitlines() == expected, name
            assert reader not in printed, name
    finally:
        demo.kubectl("delete", "-f", str(manifest), "--wait=false")


def test_replay_rebuilds_read_model(demo: Demo) -> None:
    """Bumping spec.replay.token rebuilds loyalty-program's read model from the
    feed: afterwards it holds exactly what it held before (oracle: every offer
    once, removed ones gone, updates applied), nothing lost or doubled."""
    wait_ready(demo)
    loyalty_url = demo.url("loyalty-program")
    offers_url = demo.url("special-offers")
    user = register_user(demo, "replay")
    marker = uuid.uuid4().hex[:8]
    kept = post_offer(demo, f"replay {marker} kept")
    updated = post_offer(demo, f"replay {marker} before update")
    removed = post_offer(demo, f"replay {marker} removed")
    status, body = http_json(
        "PUT", f"{offers_url}/offers/{updated}", {"description": f"replay {marker} updated"}
    )
    assert status == 200, body
    status, body = http_json("DELETE", f"{offers_url}/offers/{removed}")
    assert status == 204, body

    def read_model() -> list[tuple[int, str]]:
        status, offers = http_json("GET", f"{loyalty_url}/users/{user['id']}/offers")
        assert status == 200, offers
        return sorted((int(o["offerId"]), str(o["description"])) for o in offers)

    def ours(rows: list[tuple[int, str]]) -> list[tuple[int, str]]:
        return [row for row in rows if marker in row[1]]

    expected = [(kept, f"replay {marker} kept"), (updated, f"replay {marker} updated")]
    # The scheduled run (every minute) brings the changes.
    wait_for(lambda: ours(read_model()) == expected, timeout=150, interval=1, what="the changes")
    before = read_model()
    assert len(before) == len(set(before)), before

    asked = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    demo.kubectl(
        "patch", "evsub", "loyalty-special-offers", "--type=merge",
        "-p", f'{{"spec": {{"replay": {{"token": "e2e-{marker}"}}}}}}',
    )  # fmt: skip
    demo.kubectl(
        "annotate", "evsub", "loyalty-special-offers", "--overwrite",
        f"feedline.dev/run-now=replay-{marker}",
    )  # fmt: skip

    def replayed() -> dict[str, Any] | None:
        status = evsub_status(demo, "loyalty-special-offers")
        last = status.get("lastRun") or {}
        # A finished run that started after the new token and read the feed
        # from its start again (a run with the old template reads only new events).
        again = last.get("startTime", "") >= asked and last.get("processed", 0) >= len(before)
        return status if again and last.get("completionTime") else None

    status_after = wait_for(replayed, timeout=150, interval=1, what="a run replaying the feed")
    assert status_after["lastRun"]["outcome"] == "CaughtUp", status_after
    after = read_model()
    assert after == before, {"lost": set(before) - set(after), "new": set(after) - set(before)}


def test_operator_pod_deleted_mid_reconcile(demo: Demo) -> None:
    """The operator pod deleted right after a run-now request: its Deployment
    brings a new one, which finishes the work: one Job for the request, every
    offer once in the read model, status caught up (oracle: nothing lost or doubled)."""
    wait_ready(demo)
    user = register_user(demo, "fault")
    marker = uuid.uuid4().hex[:8]
    ids = {post_offer(demo, f"fault {marker} #{i}") for i in range(3)}
    request = f"fault-{marker}"
    request_run_now(demo, request)
    operator = ["-n", demo.operator_namespace]
    demo.cluster.kubectl(
        *operator, "delete", "pod", "-l", "app.kubernetes.io/name=feedline-operator", "--wait=false"
    )
    demo.cluster.kubectl(
        *operator, "rollout", "status", "deployment", "--timeout=120s", timeout=130
    )
    loyalty_url = demo.url("loyalty-program")

    def all_once() -> bool:
        status, offers = http_json("GET", f"{loyalty_url}/users/{user['id']}/offers")
        assert status == 200, offers
        seen = [int(o["offerId"]) for o in offers]
        assert len(seen) == len(set(seen)), f"an offer twice in the read model: {seen}"
        return ids <= set(seen)

    wait_for(all_once, timeout=150, interval=1, what="every offer once in the read model")

    def caught_up() -> dict[str, Any] | None:
        status = evsub_status(demo, "loyalty-special-offers")
        return (
            status
            if status.get("lag") == 0 and status.get("position") == status.get("head")
            else None
        )

    wait_for(caught_up, timeout=90, interval=1, what="status caught up")
    jobs = demo.cluster.kubectl_json("-n", demo.namespace, "get", "jobs")["items"]
    for_request = [
        j
        for j in jobs
        if (j["metadata"].get("annotations") or {}).get("feedline.dev/run-now-request") == request
    ]
    assert len(for_request) <= 1, [j["metadata"]["name"] for j in for_request]
