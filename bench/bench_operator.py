"""Benchmark: N EventSubscriptions created at once against a real control plane.

Measures, per object, the time from its create call returning until its
status says Ready=True (the child exists and matches the spec), p50/p99, the
time until every CronJob exists, and the operator's peak RSS (VmHWM). The
operator runs as `feedline operator` in its own process, with the chart's
ServiceAccount token. Not a test: run it by hand and copy the figures into
docs/benchmarks.md.

    .venv/bin/python -m bench.bench_operator [--count 500] [--workers 8]

Conditions, printed with the figures under "conditions": the test control
plane of tests/support/kube (one etcd member started with
--unsafe-no-fsync=true, read back from its command line here, so writes are
not flushed to disk: faster than a production etcd; kube-apiserver and
kube-controller-manager on the same machine; no scheduler or kubelet, and the
CronJobs' schedule never fires during the run), the operator's workers, the
client threads, the machine's cores and load average at start and end.

Correctness is checked, not printed: at the end there must be exactly N
EventSubscriptions, all Ready=True, exactly N CronJobs and no Deployments,
each CronJob controlled by exactly one subscription and each subscription
controlling exactly one CronJob, and the operator still running. When a check
fails the figures are printed with the problems under "checks" and the process
exits with status 1; when not every subscription is seen Ready=True within
READY_TIMEOUT_SECONDS it stops there, also with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, watch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.kube import apis  # noqa: E402
from tests.support.kube.binaries import find_helm  # noqa: E402
from tests.support.kube.cluster import (  # noqa: E402
    Cluster,
    api_client,
    create_namespace,
    open_cluster,
)
from tests.support.operator_fixtures import (  # noqa: E402
    GROUP,
    PLURAL,
    VERSION,
    apply_chart_rbac,
    install_crd,
    service_account_kubeconfig,
    subscription,
)

from bench.checks import (  # noqa: E402
    CheckError,
    Child,
    Subscription,
    cores,
    fail_and_exit,
    filesystem_of,
    load_average,
    operator_problems,
    ratio,
)

CLIENT_THREADS = 16
READY_TIMEOUT_SECONDS = 600.0


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def etcd_conditions(cluster: Cluster) -> str:
    """How etcd runs, from its own command line (or that it is someone else's)."""
    if cluster.control_plane is None:
        return "external cluster (FEEDLINE_TEST_KUBECONFIG): etcd settings not known"
    plane = cluster.control_plane
    etcd = next(c for c in plane.components if c.name == "etcd")
    no_fsync = any(arg.startswith("--unsafe-no-fsync") for arg in etcd.argv)
    data = next(
        (Path(arg.split("=", 1)[1]) for arg in etcd.argv if arg.startswith("--data-dir=")),
        plane.workdir,
    )
    fsync = (
        "--unsafe-no-fsync=true: writes are NOT flushed to disk (the test control "
        "plane's data is thrown away; a production etcd fsyncs its WAL on every commit, "
        "so its writes are slower than here)"
        if no_fsync
        else "fsync on (etcd's default)"
    )
    return f"one member, {fsync}; data in {data} on {filesystem_of(data.parent)}"


def end_state(api: client.ApiClient, namespace: str) -> tuple[list[Subscription], list[Child]]:
    custom = apis.custom(api)
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    subscriptions = [
        Subscription(
            name=obj["metadata"]["name"],
            uid=obj["metadata"]["uid"],
            ready=any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (obj.get("status") or {}).get("conditions") or []
            ),
        )
        for obj in listed
    ]
    cronjobs = apis.batch(api).list_namespaced_cron_job(namespace).items
    deployments = apis.apps(api).list_namespaced_deployment(namespace).items
    workloads = [("CronJob", item) for item in cronjobs]
    workloads += [("Deployment", item) for item in deployments]
    children = [
        Child(
            kind=kind,
            name=item.metadata.name,
            controller_uids=tuple(
                ref.uid
                for ref in item.metadata.owner_references or []
                if ref.controller and ref.kind == "EventSubscription"
            ),
        )
        for kind, item in workloads
    ]
    return subscriptions, children


def run(count: int, workers: int) -> dict[str, Any]:  # noqa: PLR0915 (one linear script)
    load_start = load_average()
    with tempfile.TemporaryDirectory() as tmp, open_cluster(Path(tmp)) as cluster:
        api = api_client(cluster.kubeconfig)
        server_version = client.VersionApi(api).get_code().git_version
        install_crd(api)
        account = apply_chart_rbac(api, find_helm())
        kubeconfig = service_account_kubeconfig(
            api, cluster.kubeconfig, account, Path(tmp) / "operator.kubeconfig"
        )
        namespace = create_namespace(api, "bench-operator")
        apis.core(api).create_namespaced_secret(
            namespace, {"metadata": {"name": "read-model"}, "stringData": {"dsn": "sqlite:///x"}}
        )
        ready_at: dict[str, float] = {}
        created_at: dict[str, float] = {}
        done = threading.Event()

        def record(obj: dict[str, Any]) -> None:
            conditions = (obj.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                ready_at.setdefault(obj["metadata"]["name"], time.monotonic())

        def observe() -> None:
            """Watch (and re-list when a watch ends) until every object is Ready."""
            custom = apis.custom(api)
            deadline = time.monotonic() + READY_TIMEOUT_SECONDS
            while len(ready_at) < count and time.monotonic() < deadline:
                listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
                for obj in listed["items"]:
                    record(obj)
                stream: Any = watch.Watch()  # type: ignore[no-untyped-call]
                for event in stream.stream(
                    custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                    resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=60,
                ):  # fmt: skip
                    record(event["object"])
                    if len(ready_at) >= count:
                        stream.stop()
            done.set()

        argv = [
            str(Path(sys.executable).with_name("feedline")), "operator",
            "--kubeconfig", str(kubeconfig), "--namespace", namespace,
            "--health-port", "0", "--metrics-port", "0", "--log-format", "plain",
            "--workers", str(workers),
        ]  # fmt: skip
        log = (Path(tmp) / "operator.log").open("wb")
        operator = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
        try:
            time.sleep(3)  # the operator's watches are up
            observer = threading.Thread(target=observe, daemon=True)
            observer.start()
            time.sleep(0.5)

            def make(index: int) -> None:
                name = f"s{index:04d}"
                apis.custom(api).create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, subscription(name)
                )
                created_at[name] = time.monotonic()

            start = time.monotonic()
            with ThreadPoolExecutor(CLIENT_THREADS) as pool:
                list(pool.map(make, range(count)))
            created_all = time.monotonic() - start
            if not done.wait(READY_TIMEOUT_SECONDS):
                raise CheckError(
                    f"only {len(ready_at)} of {count} EventSubscriptions seen Ready=True "
                    f"within {READY_TIMEOUT_SECONDS:.0f} s"
                )
            all_ready = max(ready_at.values()) - start
            subscriptions, children = end_state(api, namespace)
            problems = operator_problems(count, subscriptions, children)
            if operator.poll() is not None:
                problems.append(f"the operator exited with {operator.returncode} during the run")
            rss = peak_rss_mib(operator.pid)
        finally:
            operator.terminate()
            operator.wait(30)
            log.close()
        latencies = [ready_at[n] - created_at[n] for n in created_at]
        cronjobs = sum(1 for child in children if child.kind == "CronJob")
        return {
            "conditions": {
                "etcd": etcd_conditions(cluster),
                "kube-apiserver": f"{server_version}, on the same machine",
                "other components": "kube-controller-manager on the same machine; "
                "no scheduler, no kubelet; the CronJobs' schedule (0 0 1 1 *) does not fire",
                "operator": f"feedline operator, own process, --workers {workers}, "
                "the chart's ServiceAccount token",
                "clients": f"{count} EventSubscriptions created from {CLIENT_THREADS} threads",
                "machine": f"{cores()} cores shared by every component; "
                f"Python {platform.python_version()}",
                "load average at start (1, 5, 15 min)": load_start,
                "load average at end (1, 5, 15 min)": load_average(),
            },
            "count": count,
            "workers": workers,
            "cronjobs": cronjobs,
            "create_calls_seconds": round(created_all, 3),
            "all_ready_seconds": round(all_ready, 3),
            "subscriptions_ready_per_second": ratio(count, all_ready),
            "p50_seconds": round(statistics.median(latencies), 3),
            "p99_seconds": round(percentile(latencies, 0.99), 3),
            "max_seconds": round(max(latencies), 3),
            "operator_peak_rss_mib": round(rss, 1),
            "checks": problems
            or [
                f"passed: {count} EventSubscriptions, all Ready=True; {cronjobs} CronJobs, "
                "no Deployments; each subscription controls exactly one CronJob and each "
                "CronJob exactly one subscription; the operator ran throughout"
            ],
            "passed": not problems,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    try:
        figures = run(args.count, args.workers)
        print(json.dumps(figures, indent=2))
        if not figures["passed"]:
            raise CheckError("; ".join(figures["checks"]))
    except CheckError as failure:
        fail_and_exit(parser.prog, failure)


if __name__ == "__main__":
    main()
