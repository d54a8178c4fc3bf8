"""Benchmark: N EventSubscriptions created at once against a real control plane.

Measures, per object, the time from its create call returning until its
status says Ready=True (the child exists and matches the spec), p50/p99, the
time until every CronJob exists, and the operator's peak RSS (VmHWM). The
operator runs as `feedline operator` in its own process, with the chart's
ServiceAccount token. Not a test: run it by hand and copy the figures into
docs/benchmarks.md.

    .venv/bin/python -m bench.bench_operator [--count 500] [--workers 8]
        [--etcd-fsync | --no-etcd-fsync] [--resync-seconds 30] [--resync-periods 2]

Then the API requests of a resync where nothing changed. The operator runs
with --resync-seconds R (its kopf timer reconciles every subscription every R
seconds: GETs of the Secret and of the subscription, whose status is patched
only when it changed; the children are read from the watch-fed indexes of
feedline_operator.child_cache, not from the API). Once every
subscription is Ready the benchmark waits R seconds more (each timer has
fired since), then reads kube-apiserver's own counters
(`apiserver_request_total` on its /metrics, by verb and resource) before and
after a window of `--resync-periods` whole periods, with the operator's CPU
seconds (psutil) and its own counters (`feedline_operator_reconciles_total`,
`feedline_operator_status_writes_total` on its --metrics-port). Then it stops
the operator and reads the same counters over a window of the same length:
the baseline (kube-controller-manager, the API server's own lease updates,
the benchmark's two /metrics reads). The operator's requests are the window's
minus the baseline's; per object per resync they are divided by N times the
periods in the window (and, as a cross-check, by the resync reconciles the
operator counted in it, which fall short of N per period when it does not
keep up).

Conditions, printed with the figures under "conditions": the test control
plane of tests/support/kube, one etcd member with fsync on (etcd's default,
as in production; --no-etcd-fsync: --unsafe-no-fsync=true, the test tiers'
setting), read back from its command line here, with the file system its data
is on; kube-apiserver and kube-controller-manager on the same machine; no
scheduler or kubelet, and the CronJobs' schedule never fires during the run),
the operator's workers and resync period, the client threads, the machine's
cores and load average at start and end. With FEEDLINE_TEST_KUBECONFIG set
the benchmark runs against that cluster instead (etcd's settings unknown, and
other clients of that cluster add noise to the request counts).

Correctness is checked, not printed: at the end there must be exactly N
EventSubscriptions, all Ready=True, exactly N CronJobs and no Deployments,
each CronJob controlled by exactly one subscription and each subscription
controlling exactly one CronJob, and the operator still running after the
window. And the resync window must hold no writes (POST, PUT, PATCH, DELETE)
by the operator to EventSubscriptions (status included), CronJobs,
Deployments, Jobs or Events: the operator means a resync of an unchanged
subscription to write nothing (reconcile.ensure replaces a child only when it
drifted; status_writes.write_status patches only a changed status; kopf
persists nothing for a timer that returns None), so a write there is a
failure, listed under "checks". Nor may it GET CronJobs or Deployments beyond
one per hundred objects per period (checks.resync_read_problems: the watch
cache answers those; a GET confirms only a stale copy). When a check fails the figures are printed
with the problems under "checks" and the process exits with status 1; when
not every subscription is seen Ready=True within READY_TIMEOUT_SECONDS (or
READY_SECONDS_PER_OBJECT per object, if longer) it
stops there, also with status 1. The last line is `SUMMARY {json}` for
bench.summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import psutil
from kubernetes import client, watch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.kube import apis  # noqa: E402
from tests.support.kube.binaries import find_binaries, find_helm  # noqa: E402
from tests.support.kube.cluster import (  # noqa: E402
    EXTERNAL_KUBECONFIG_ENV,
    Cluster,
    api_client,
    create_namespace,
)
from tests.support.kube.controlplane import ControlPlane, ControlPlaneOptions  # noqa: E402
from tests.support.operator_fixtures import (  # noqa: E402
    GROUP,
    PLURAL,
    VERSION,
    apply_chart_rbac,
    install_crd,
    service_account_kubeconfig,
    subscription,
)
from tests.support.ports import free_port  # noqa: E402

from bench.checks import (  # noqa: E402
    WRITE_VERBS,
    CheckError,
    Child,
    RequestKey,
    Subscription,
    apiserver_requests,
    cores,
    fail_and_exit,
    filesystem_of,
    load_average,
    operator_problems,
    plain,
    ratio,
    request_delta,
    resync_read_problems,
    resync_write_problems,
    significant,
)
from bench.serving import metric_total  # noqa: E402

CLIENT_THREADS = 16
READY_TIMEOUT_SECONDS = 600.0
# More objects take longer to make: at least this long per object (5,000: 1,500 s).
READY_SECONDS_PER_OBJECT = 0.3
# After the last Ready: one resync period and this much more before the window.
SETTLE_MARGIN_SECONDS = 5.0
# After the operator stops: its watches end before the baseline window starts.
STOP_MARGIN_SECONDS = 5.0
# What the operator writes; none of it may be written while nothing changes.
OPERATOR_WRITES = ("eventsubscriptions", "cronjobs", "deployments", "jobs", "events")
# What the operator reads from its watches' indexes, never with a GET each.
CACHED_CHILDREN = ("cronjobs", "deployments")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.contextmanager
def open_bench_cluster(workdir: Path, *, etcd_fsync: bool) -> Iterator[Cluster]:
    """The cluster of FEEDLINE_TEST_KUBECONFIG, else the test control plane with etcd's fsync
    as asked (tests.support.kube.cluster.open_cluster always turns it off)."""
    external = os.environ.get(EXTERNAL_KUBECONFIG_ENV)
    if external:
        yield Cluster(kubeconfig=Path(external), control_plane=None)
        return
    binaries = find_binaries()  # fails (with how to build) before starting anything
    options = ControlPlaneOptions(etcd_fsync=etcd_fsync)
    with ControlPlane(binaries, workdir, options) as plane:
        yield Cluster(kubeconfig=plane.kubeconfig, control_plane=plane)


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
        else "fsync on (etcd's default, as in production: its WAL is flushed to disk on "
        "every commit; no --unsafe-no-fsync on its command line)"
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


def apiserver_metrics(api: client.ApiClient) -> str:
    """kube-apiserver's /metrics (Prometheus text), read with the admin's credentials."""
    method, url, headers, _, _ = api.param_serialize(
        method="GET",
        resource_path="/metrics",
        header_params={"Accept": "text/plain"},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, header_params=headers, _request_timeout=60)
    raw = response.read()  # type: ignore[no-untyped-call]
    text = raw.decode() if isinstance(raw, bytes) else str(raw or "")
    if response.status != 200:
        raise CheckError(f"GET /metrics of kube-apiserver: HTTP {response.status}: {text[:300]}")
    return text


def operator_metrics(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


def reconciles_by_trigger(metrics: str) -> dict[str, float]:
    """feedline_operator_reconciles_total summed per trigger."""
    triggers: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("feedline_operator_reconciles_total{"):
            trigger = re.search(r'trigger="([^"]*)"', line)
            name = trigger.group(1) if trigger else ""
            triggers[name] = triggers.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return triggers


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process (its exited threads included)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def request_table(
    window: Mapping[RequestKey, float],
    baseline: Mapping[RequestKey, float],
    objects_times_periods: float,
) -> dict[str, dict[str, Any]]:
    """Per "VERB resource": the window's, the baseline's, the operator's, and per object
    per resync; the operator's largest first."""
    keys = set(window) | set(baseline)
    rows = []
    for key in keys:
        seen, base = window.get(key, 0.0), baseline.get(key, 0.0)
        rows.append((seen - base, key, seen, base))
    rows.sort(key=lambda row: (-row[0], row[1]))
    return {
        f"{verb} {resource}": {
            "operator": plain(operator),
            "per_object_per_resync": float(significant(operator / objects_times_periods)),
            "window": plain(seen),
            "baseline": plain(base),
        }
        for operator, (verb, resource), seen, base in rows
    }


def measure_resync(
    api: client.ApiClient,
    operator: subprocess.Popen[bytes],
    metrics_port: int,
    resync_seconds: float,
    periods: int,
) -> dict[str, Any]:
    """The operator's window of whole resync periods (it keeps running afterwards)."""
    window_seconds = resync_seconds * periods
    apiserver_before = apiserver_requests(apiserver_metrics(api))
    operator_before = operator_metrics(metrics_port)
    cpu_before = cpu_seconds(operator.pid)
    started = time.monotonic()
    time.sleep(window_seconds)
    apiserver_after = apiserver_requests(apiserver_metrics(api))
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(operator.pid) - cpu_before
    operator_after = operator_metrics(metrics_port)
    before, after = reconciles_by_trigger(operator_before), reconciles_by_trigger(operator_after)
    reconciles = {
        trigger: after[trigger] - before.get(trigger, 0.0)
        for trigger in after
        if after[trigger] != before.get(trigger, 0.0)
    }
    status_writes = metric_total(
        operator_after, "feedline_operator_status_writes_total"
    ) - metric_total(operator_before, "feedline_operator_status_writes_total")
    return {
        "window_seconds": elapsed,
        "requests": request_delta(apiserver_before, apiserver_after),
        "operator_cpu_seconds": cpu,
        "reconciles": reconciles,
        "status_writes": status_writes,
    }


def measure_baseline(api: client.ApiClient, window_seconds: float) -> dict[RequestKey, float]:
    before = apiserver_requests(apiserver_metrics(api))
    time.sleep(window_seconds)
    return request_delta(before, apiserver_requests(apiserver_metrics(api)))


def resync_figures(
    window: Mapping[str, Any],
    baseline: Mapping[RequestKey, float],
    count: int,
    resync_seconds: float,
    periods: int,
) -> tuple[dict[str, Any], list[str]]:
    """The resync section of the figures, and the problems its checks found."""
    requests: Mapping[RequestKey, float] = window["requests"]
    operator = request_delta(baseline, requests)  # the window's minus the baseline's
    total = sum(operator.values())
    writes = sum(v for (verb, _), v in operator.items() if verb in WRITE_VERBS)
    objects_times_periods = count * periods
    resyncs = window["reconciles"].get("resync", 0.0)
    others = {t: n for t, n in window["reconciles"].items() if t != "resync"}
    problems = resync_write_problems(operator, OPERATOR_WRITES)
    problems += resync_read_problems(operator, CACHED_CHILDREN, objects_times_periods)
    figures = {
        "resync_seconds": resync_seconds,
        "periods_in_window": periods,
        "window_seconds": round(window["window_seconds"], 3),
        "baseline": "the same length of time right after, the operator stopped",
        "operator_requests": plain(total),
        "requests_per_object_per_resync": ratio(total, objects_times_periods),
        "writes_per_object_per_resync": ratio(writes, objects_times_periods),
        "resync_reconciles_in_window": f"{plain(resyncs)} (N x periods = "
        f"{plain(objects_times_periods)})",
        "requests_per_resync_reconcile": ratio(total, resyncs) if resyncs else "no resync ran",
        "other_reconciles_in_window": others or "none",
        "status_writes_in_window": plain(window["status_writes"]),
        "operator_cpu_seconds_in_window": round(window["operator_cpu_seconds"], 3),
        "operator_cpu_ms_per_object_per_resync": float(
            significant(1000 * window["operator_cpu_seconds"] / objects_times_periods)
        ),
        "by_verb_and_resource": request_table(requests, baseline, objects_times_periods),
    }
    return figures, problems


def run(  # noqa: PLR0915 (one linear script)
    count: int, workers: int, *, etcd_fsync: bool, resync_seconds: float, periods: int
) -> dict[str, Any]:
    load_start = load_average()
    ready_timeout = max(READY_TIMEOUT_SECONDS, count * READY_SECONDS_PER_OBJECT)
    with (
        tempfile.TemporaryDirectory() as tmp,
        open_bench_cluster(Path(tmp), etcd_fsync=etcd_fsync) as cluster,
    ):
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
            deadline = time.monotonic() + ready_timeout
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

        metrics_port = free_port()
        argv = [
            str(Path(sys.executable).with_name("feedline")), "operator",
            "--kubeconfig", str(kubeconfig), "--namespace", namespace,
            "--health-port", "0", "--metrics-port", str(metrics_port), "--log-format", "plain",
            "--workers", str(workers), "--resync-seconds", str(resync_seconds),
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
            if not done.wait(ready_timeout):
                raise CheckError(
                    f"only {len(ready_at)} of {count} EventSubscriptions seen Ready=True "
                    f"within {ready_timeout:.0f} s"
                )
            all_ready = max(ready_at.values()) - start
            observer.join(30)
            # Steady state: every subscription's timer has fired since it became Ready.
            time.sleep(resync_seconds + SETTLE_MARGIN_SECONDS)
            window = measure_resync(api, operator, metrics_port, resync_seconds, periods)
            subscriptions, children = end_state(api, namespace)
            problems = operator_problems(count, subscriptions, children)
            if operator.poll() is not None:
                problems.append(f"the operator exited with {operator.returncode} during the run")
            rss = peak_rss_mib(operator.pid)
            operator.terminate()
            operator.wait(30)
            time.sleep(STOP_MARGIN_SECONDS)
            baseline = measure_baseline(api, window["window_seconds"])
        finally:
            if operator.poll() is None:
                operator.terminate()
                operator.wait(30)
            log.close()
        resync, write_problems = resync_figures(window, baseline, count, resync_seconds, periods)
        problems += write_problems
        latencies = [ready_at[n] - created_at[n] for n in created_at]
        cronjobs = sum(1 for child in children if child.kind == "CronJob")
        return {
            "conditions": {
                "etcd": etcd_conditions(cluster),
                "kube-apiserver": f"{server_version}, on the same machine",
                "other components": "kube-controller-manager on the same machine; "
                "no scheduler, no kubelet; the CronJobs' schedule (0 0 1 1 *) does not fire",
                "operator": f"feedline operator, own process, --workers {workers}, "
                f"--resync-seconds {plain(resync_seconds)}, the chart's ServiceAccount token",
                "resync window": f"{periods} periods ({plain(resync_seconds * periods)} s), "
                f"from {plain(resync_seconds + SETTLE_MARGIN_SECONDS)} s after the last Ready; "
                "requests from kube-apiserver's apiserver_request_total, minus a baseline of "
                "the same length with the operator stopped",
                "clients": f"{count} EventSubscriptions created from {CLIENT_THREADS} threads",
                "machine": f"{cores()} cores shared by every component; "
                f"Python {platform.python_version()}",
                "load average at start (1, 5, 15 min)": load_start,
                "load average at end (1, 5, 15 min)": load_average(),
            },
            "count": count,
            "workers": workers,
            "etcd_fsync": etcd_fsync if cluster.control_plane is not None else None,
            "cronjobs": cronjobs,
            "create_calls_seconds": round(created_all, 3),
            "all_ready_seconds": round(all_ready, 3),
            "subscriptions_ready_per_second": ratio(count, all_ready),
            "p50_seconds": round(statistics.median(latencies), 3),
            "p99_seconds": round(percentile(latencies, 0.99), 3),
            "max_seconds": round(max(latencies), 3),
            "operator_peak_rss_mib": round(rss, 1),
            "resync_nothing_changed": resync,
            "checks": problems
            or [
                f"passed: {count} EventSubscriptions, all Ready=True; {cronjobs} CronJobs, "
                "no Deployments; each subscription controls exactly one CronJob and each "
                "CronJob exactly one subscription; the operator ran throughout; no writes "
                f"to {', '.join(OPERATOR_WRITES)} in the resync window, and no GETs of "
                f"{', '.join(CACHED_CHILDREN)} beyond one per 100 objects"
            ],
            "passed": not problems,
        }


def summary_line(figures: Mapping[str, Any]) -> str:
    """`SUMMARY {json}` for bench.summary: the headline figures."""
    resync = figures["resync_nothing_changed"]
    fsync = {True: "etcd fsync on", False: "etcd fsync off", None: "external cluster"}[
        figures["etcd_fsync"]
    ]
    count = figures["count"]
    per_resync = resync["requests_per_object_per_resync"].split(" = ", 1)
    rows = [
        ("all Ready", figures["all_ready_seconds"], "s", f"{count} at once, {fsync}"),
        ("per object p50", figures["p50_seconds"], "s", ""),
        ("per object p99", figures["p99_seconds"], "s", ""),
        ("operator peak RSS (VmHWM)", figures["operator_peak_rss_mib"], "MiB", ""),
        (
            "API requests per object per no-op resync",
            per_resync[0],
            "req",
            f"{per_resync[1]} (objects x periods), --resync-seconds "
            f"{plain(resync['resync_seconds'])}",
        ),
        (
            "writes per object per no-op resync",
            resync["writes_per_object_per_resync"].split(" = ", 1)[0],
            "req",
            "",
        ),
        (
            "operator CPU per object per no-op resync",
            resync["operator_cpu_ms_per_object_per_resync"],
            "ms",
            f"{resync['operator_cpu_seconds_in_window']} s in {resync['window_seconds']} s",
        ),
    ]
    summary = {
        "module": "bench_operator",
        "count": count,
        "figures": [
            {"name": name, "value": value, "unit": unit, **({"detail": detail} if detail else {})}
            for name, value, unit, detail in rows
        ],
    }
    return "SUMMARY " + orjson.dumps(summary).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--etcd-fsync",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="etcd flushes its WAL on every commit (its default; --no-etcd-fsync: "
        "--unsafe-no-fsync=true, as the test tiers run it)",
    )
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=30.0,
        help="the operator's --resync-seconds (its own default is 60)",
    )
    parser.add_argument(
        "--resync-periods",
        type=int,
        default=2,
        help="resync periods in the window where nothing changes",
    )
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    if args.resync_seconds < 1 or args.resync_periods < 1:
        parser.error("--resync-seconds and --resync-periods must be at least 1")
    try:
        figures = run(
            args.count,
            args.workers,
            etcd_fsync=args.etcd_fsync,
            resync_seconds=args.resync_seconds,
            periods=args.resync_periods,
        )
        print(json.dumps(figures, indent=2))
        if not figures["passed"]:
            raise CheckError("; ".join(figures["checks"]))
        print(summary_line(figures))
    except CheckError as failure:
        fail_and_exit(parser.prog, failure)


if __name__ == "__main__":
    main()
