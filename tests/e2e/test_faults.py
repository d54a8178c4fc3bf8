"""Faults on the node as users meet them, each ended by the exactly-once oracle.

A subscriber pod force-deleted in the middle of its run, and PostgreSQL (the
read model's and the feed's database) crashing during a catch-up. The read
model is the shipped journal projection (one row per event, primary key on
the sequence number): afterwards it must hold exactly the feed's events, each
once, and the subscription's status must say caught up at the feed's head.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.actions import evsub_status, post_offer, request_run_now, wait_ready
from tests.e2e.clients import http_json
from tests.e2e.conftest import Demo
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

JOURNAL = "feedline_subscriber.projections.journal:project_journal"
# Enough events that a run with one event per batch (one feed page and one
# transaction each) lasts seconds: the fault lands while it writes.
BACKLOG = 600
RUN_NOW_REQUEST = "feedline.dev/run-now-request"  # on the Job a request made
DATABASE = "read_models"  # the demo's database for subscribers' read models


def apply_journal_subscription(
    demo: Demo,
    name: str,
    tmp_path: Path,
    *,
    feed: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> None:
    """A CronJob subscription (yearly: it runs on request) writing a feed into
    the journal, in the demo's read-models database; by default the demo's own
    special-offers feed and auth."""
    template = demo.cluster.kubectl_json(
        "-n", demo.namespace, "get", "evsub", "loyalty-special-offers"
    )["spec"]
    body: dict[str, Any] = {
        "apiVersion": "feedline.dev/v1alpha1",
        "kind": "EventSubscription",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {
            "feed": feed or template["feed"],
            "mode": "CronJob",
            "schedule": "0 0 1 1 *",
            "readModel": {
                "databaseSecretRef": {
                    "name": template["readModel"]["databaseSecretRef"]["name"],
                    "key": "read-models",
                },
                "projection": JOURNAL,
            },
            **({"subscriber": template["subscriber"]} if "subscriber" in template else {}),
            **spec,
        },
    }
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(yaml.safe_dump(body))
    demo.kubectl("apply", "-f", str(manifest))


@pytest.fixture
def subscription_name(demo: Demo, request: pytest.FixtureRequest) -> Iterator[str]:
    """A name no earlier run used (a node of `make node-up` keeps their rows);
    the subscription is deleted afterwards (helm uninstall must find only the
    charts' objects)."""
    prefix = request.node.name.removeprefix("test_").replace("_", "-")[:40]
    name = f"{prefix}-{uuid.uuid4().hex[:4]}"
    yield name
    demo.kubectl("delete", "evsub", name, "--ignore-not-found", "--wait=false")


def postgres_pod(demo: Demo) -> str:
    return demo.kubectl(
        "get", "pods", "-l", "app.kubernetes.io/component=database",
        "-o", "jsonpath={.items[0].metadata.name}",
    ).strip()  # fmt: skip


def psql(demo: Demo, sql: str, *, check: bool = True) -> str:
    """One query in the PostgreSQL pod, as its user would run it (kubectl exec)."""
    return demo.kubectl(
        "exec", postgres_pod(demo), "--",
        "psql", "-U", "feedline", "-d", DATABASE, "-v", "ON_ERROR_STOP=1", "-Atc", sql,
        check=check, timeout=30,
    ).strip()  # fmt: skip


def journal(demo: Demo, subscription: str) -> list[int]:
    rows = psql(demo, "SELECT subscription, sequence_number FROM feedline_journal ORDER BY 2")
    pairs = (line.split("|") for line in rows.splitlines())
    return [int(number) for name, number in pairs if name == subscription]


def journal_size(demo: Demo, subscription: str) -> int:
    """Rows so far; 0 before the run made the table (or while the database is down)."""
    out = psql(demo, "SELECT subscription, count(*) FROM feedline_journal GROUP BY 1", check=False)
    counts = dict(line.split("|") for line in out.splitlines() if line.count("|") == 1)
    return int(counts.get(subscription, 0))


def feed_sequence_numbers(demo: Demo) -> list[int]:
    """The special-offers feed from its start, read as any subscriber would."""
    # The token the demo's own subscription reads it with (a Secret's key).
    ref = demo.cluster.kubectl_json("-n", demo.namespace, "get", "evsub", "loyalty-special-offers")[
        "spec"
    ]["feed"]["auth"]["secretRef"]
    secret = demo.cluster.kubectl_json("-n", demo.namespace, "get", "secret", ref["name"])
    token = base64.b64decode(secret["data"][ref["key"]]).decode()
    status, events = http_json(
        "GET",
        f"{demo.url('special-offers')}/events?start=1&limit=10000",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert status == 200, events
    assert len(events) < 10_000, "the feed outgrew one page: read it page by page"
    return [int(event["sequenceNumber"]) for event in events]


def post_backlog(demo: Demo, marker: str) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: post_offer(demo, f"{marker} #{i}"), range(BACKLOG)))


def subscriber_pod(demo: Demo, name: str) -> str | None:
    pods = demo.cluster.kubectl_json(
        "-n", demo.namespace, "get", "pods", "-l", f"feedline.dev/subscription={name}"
    )["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"]
    return str(running[0]["metadata"]["name"]) if running else None


def job_for(demo: Demo, request: str) -> dict[str, Any] | None:
    jobs = demo.cluster.kubectl_json("-n", demo.namespace, "get", "jobs")["items"]
    for job in jobs:
        if (job["metadata"].get("annotations") or {}).get(RUN_NOW_REQUEST) == request:
            return dict(job)
    return None


def job_finished(demo: Demo, request: str) -> str | None:
    """``Complete`` or ``Failed`` once the run-now request's Job has ended."""
    job = job_for(demo, request) or {}
    for condition in job.get("status", {}).get("conditions") or []:
        if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
            return str(condition["type"])
    return None


def run_now(demo: Demo, name: str) -> tuple[str, str]:
    """A run-now request: its id and when it was made (RFC 3339, for lastRun)."""
    request = f"{name}-{uuid.uuid4().hex[:6]}"
    asked = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    request_run_now(demo, request, subscription=name)
    return request, asked


def run_with_fault(
    demo: Demo, name: str, fault: Callable[[str], None], tmp_path: Path
) -> dict[str, Any]:
    """Backlog, run-now, and ``fault(pod)`` once the journal has rows but not
    all of them. Returns the run's Job once it has ended."""
    # One event per batch (a feed page and a transaction each): the run lasts seconds.
    apply_journal_subscription(demo, name, tmp_path, batchSize=1, onPoisonEvent="Halt")
    demo.kubectl("wait", "--for=condition=Ready", f"evsub/{name}", "--timeout=120s", timeout=130)
    post_backlog(demo, f"{name} {uuid.uuid4().hex[:6]}")
    total = len(feed_sequence_numbers(demo))
    request, _ = run_now(demo, name)
    pod = wait_for(lambda: subscriber_pod(demo, name), timeout=60, interval=0.2, what="a pod")
    seen = wait_for(
        lambda: journal_size(demo, name) or None, timeout=60, interval=0.1, what="first rows"
    )
    fault(pod)
    assert seen < total, f"the run had finished ({seen} of {total} rows) before the fault"
    print(f"{name}: the fault struck after {seen} of {total} rows")
    wait_for(lambda: job_finished(demo, request), timeout=240, what="the Job's end")
    return job_for(demo, request) or {}


def caught_up_since(demo: Demo, name: str, asked: str) -> dict[str, Any]:
    """The status once a run that started after ``asked`` finished caught up."""

    def caught_up() -> dict[str, Any] | None:
        status = evsub_status(demo, name)
        last = status.get("lastRun") or {}
        done = last.get("completionTime") and last.get("startTime", "") >= asked
        return status if done and last.get("outcome") == "CaughtUp" else None

    return dict(wait_for(caught_up, timeout=180, interval=1, what=f"{name} caught up"))


def assert_exactly_once(demo: Demo, name: str, status: dict[str, Any]) -> None:
    feed = feed_sequence_numbers(demo)
    rows = journal(demo, name)
    assert status["lastRun"]["outcome"] == "CaughtUp", status
    assert not status["lastRun"].get("deadLettered"), status
    assert status["position"] == status["head"] == rows[-1], status
    expected = [number for number in feed if number <= status["position"]]
    missing = sorted(set(expected) - set(rows))
    extra = sorted(set(rows) - set(expected))
    assert not missing, f"lost: {missing[:20]}"
    assert not extra, f"not in the feed: {extra[:20]}"
    assert len(rows) == len(set(rows)) == len(expected)


def test_subscriber_pod_force_deleted_mid_run(
    demo: Demo, subscription_name: str, tmp_path: Path
) -> None:
    """`kubectl delete pod --force --grace-period=0` while the run writes: the
    subscriber stops (SIGTERM: the batch in hand commits or rolls back with its
    checkpoint), the next run resumes from the checkpoint; nothing lost,
    nothing applied twice, status caught up."""
    wait_ready(demo)
    name = subscription_name

    def force_delete(pod: str) -> None:
        demo.kubectl("delete", "pod", pod, "--force", "--grace-period=0")

    job = run_with_fault(demo, name, force_delete, tmp_path)
    print(f"{name}: the run's Job ended {job['status']}")
    # The deleted pod's report is gone with it; the next run (here asked for
    # now rather than at the schedule) finishes the work.
    _, asked = run_now(demo, name)
    assert_exactly_once(demo, name, caught_up_since(demo, name, asked))


def test_postgresql_restarted_during_catch_up(
    demo: Demo, subscription_name: str, tmp_path: Path
) -> None:
    """PostgreSQL crashes (SIGQUIT: immediate shutdown) while a run catches up:
    kubelet restarts its container (the data stays in the pod's volume), and
    the same run retries the database and the feed with backoff and finishes;
    nothing lost, nothing applied twice."""
    wait_ready(demo)
    name = subscription_name
    restarts_before = postgres_restarts(demo)

    def crash_postgres(_pod: str) -> None:
        # SIGQUIT to the postmaster (PID 1 of its container): an immediate
        # shutdown, crash recovery at the next start.
        demo.kubectl("exec", postgres_pod(demo), "--", "sh", "-c", "kill -QUIT 1")

    began = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    job = run_with_fault(demo, name, crash_postgres, tmp_path)
    # The run that met the crash finished it: one pod, no failure, no retry by the Job.
    assert job["status"].get("succeeded") == 1, job["status"]
    assert not job["status"].get("failed"), job["status"]
    assert postgres_restarts(demo) > restarts_before, "PostgreSQL's container did not restart"
    assert_exactly_once(demo, name, caught_up_since(demo, name, began))


def postgres_restarts(demo: Demo) -> int:
    pod = demo.cluster.kubectl_json("-n", demo.namespace, "get", "pod", postgres_pod(demo))
    return sum(int(c.get("restartCount", 0)) for c in pod["status"]["containerStatuses"])


def test_failed_run_is_stalled(demo: Demo, subscription_name: str, tmp_path: Path) -> None:
    """A run whose feed cannot be reached: its pod fails, and `kubectl get
    evsub` / `kubectl describe` say so: Stalled=True, lastRun Failed naming the
    feed, a Warning Event."""
    name = subscription_name
    apply_journal_subscription(
        demo,
        name,
        tmp_path,
        feed={"url": "http://no-such-service/events", "retryAttempts": 0},
        annotations={"feedline.dev/run-now": "first"},
    )

    def stalled() -> dict[str, Any] | None:
        status = evsub_status(demo, name)
        conditions = {c["type"]: c for c in status.get("conditions", [])}
        return status if conditions.get("Stalled", {}).get("status") == "True" else None

    status = wait_for(stalled, timeout=120, interval=1, what=f"{name} Stalled")
    assert status["lastRun"]["outcome"] == "Failed", status
    assert "no-such-service" in status["lastRun"]["message"], status
    events = demo.cluster.kubectl_json(
        "-n", demo.namespace, "get", "events",
        "--field-selector", f"involvedObject.name={name},type=Warning",
    )["items"]  # fmt: skip
    assert any(e["reason"] == "RunFailed" for e in events), events
