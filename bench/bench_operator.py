"""Benchmark: N EventSubscriptions created at once against a real control plane.

Measures, per object, the time from its create call returning until its
status says Ready=True (the child exists and matches the spec), p50/p99, the
time until every CronJob exists, and the operator's peak RSS (VmHWM). The
operator runs as `feedline operator` in its own process, with the chart's
ServiceAccount token. Not a test: run it by hand and copy the figures into
docs/benchmarks.md.

    .venv/bin/python bench/bench_operator.py [--count 500] [--workers 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import watch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.kube import apis  # noqa: E402
from tests.support.kube.binaries import find_helm  # noqa: E402
from tests.support.kube.cluster import api_client, create_namespace, open_cluster  # noqa: E402
from tests.support.operator_fixtures import (  # noqa: E402
    GROUP,
    PLURAL,
    VERSION,
    apply_chart_rbac,
    install_crd,
    service_account_kubeconfig,
    subscription,
)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(count: int, workers: int) -> dict[str, Any]:  # noqa: PLR0915 (one linear script)
    with tempfile.TemporaryDirectory() as tmp, open_cluster(Path(tmp)) as cluster:
        api = api_client(cluster.kubeconfig)
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
            deadline = time.monotonic() + 600
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
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(make, range(count)))
            created_all = time.monotonic() - start
            if not done.wait(600):
                raise TimeoutError(f"only {len(ready_at)} of {count} Ready after 600 s")
            all_ready = max(ready_at.values()) - start
            cronjobs = apis.batch(api).list_namespaced_cron_job(namespace).items
            rss = peak_rss_mib(operator.pid)
        finally:
            operator.terminate()
            operator.wait(30)
            log.close()
        latencies = [ready_at[n] - created_at[n] for n in created_at]
        return {
            "count": count,
            "workers": workers,
            "cronjobs": len(cronjobs),
            "create_calls_seconds": round(created_all, 2),
            "all_ready_seconds": round(all_ready, 2),
            "p50_seconds": round(statistics.median(latencies), 3),
            "p99_seconds": round(percentile(latencies, 0.99), 3),
            "max_seconds": round(max(latencies), 3),
            "operator_peak_rss_mib": round(rss, 1),
            "cpus": os.cpu_count(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(run(args.count, args.workers), indent=2))


if __name__ == "__main__":
    main()
