"""TEST SUPPORT ONLY: a minimal node agent standing in for kubelet + scheduler.

It registers a Ready Node, watches pods, binds Pending unscheduled pods to that
node (pods/binding), runs their containers through a `Runner` (by default as
local processes, see runners.py) and reports pod status like a kubelet: phase
Running, then Succeeded/Failed with containerStatuses[].state.terminated
{exitCode, reason, message}. Deleting a pod stops its containers and finishes
the deletion (grace period 0), as a kubelet does.

Deliberately out of scope: scheduling constraints (nodeSelector, affinity,
taints, resources), volumes and projected tokens, probes, networking (pod IP is
127.0.0.1), sidecar init containers, `kubectl logs/exec`, image entrypoints.
Never use it outside tests.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from kubernetes import client, watch

from tests.support.kube import apis
from tests.support.kube.podenv import EnvConfigError, EnvResolver, expand
from tests.support.kube.runners import (
    ContainerExit,
    ContainerRun,
    ContainerStartError,
    LocalProcessRunner,
    Runner,
    RunningContainer,
    now,
)

log = logging.getLogger(__name__)

NODE_NAME = "feedline-local-node"
HOST_IP = "127.0.0.1"
_MERGE_PATCH = "application/merge-patch+json"
_TERMINAL = ("Succeeded", "Failed")
_MAX_GRACE_SECONDS = 10.0
_MAX_BACKOFF_SECONDS = 10.0


def _ts(value: Any) -> str:
    return str(value.strftime("%Y-%m-%dT%H:%M:%SZ"))


def _terminated(exit_: ContainerExit, container_id: str) -> dict[str, Any]:
    return {
        "terminated": {
            "exitCode": exit_.exit_code,
            "reason": exit_.reason,
            "message": exit_.message,
            "startedAt": _ts(exit_.started_at),
            "finishedAt": _ts(exit_.finished_at),
            "containerID": container_id,
        }
    }


class _ContainerSlot:
    """One container of a pod: its spec, current process and reported state."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.running: RunningContainer | None = None
        self.restart_count = 0
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict[str, Any] = {}
        self.exit: ContainerExit | None = None
        self.restart_at = 0.0

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": self.spec.name,
            "image": self.spec.image or "",
            "imageID": "",
            "ready": "running" in self.state,
            "started": "running" in self.state,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.running is not None:
            status["containerID"] = self.running.container_id
        return status


class PodWorker(threading.Thread):
    """Runs one pod from binding to a terminal phase (or deletion)."""

    def __init__(self, agent: NodeAgent, pod: Any) -> None:
        meta = pod.metadata
        super().__init__(name=f"pod-{meta.namespace}/{meta.name}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.namespace: str = meta.namespace
        self.pod_name: str = meta.name
        self.uid: str = meta.uid
        self.workdir = agent.workdir / f"{meta.namespace}_{meta.name}_{meta.uid[:8]}"
        self.restart_policy: str = pod.spec.restart_policy or "Always"
        self.init_slots = [_ContainerSlot(c) for c in pod.spec.init_containers or []]
        self.slots = [_ContainerSlot(c) for c in pod.spec.containers]
        self._stop_requested = threading.Event()
        self._delete_after_stop = False
        self._grace = _MAX_GRACE_SECONDS
        self._start_time = now()

    # --- control from the agent ---------------------------------------------

    def request_stop(self, *, finish_deletion: bool, grace_seconds: float | None = None) -> None:
        self._delete_after_stop = self._delete_after_stop or finish_deletion
        if grace_seconds is not None:
            self._grace = min(self._grace, grace_seconds)
        self._stop_requested.set()

    def log_path(self, container: str) -> Path:
        return self.workdir / container / "output.log"

    # --- the pod's life ------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception(
                "node agent: pod %s/%s failed unexpectedly", self.namespace, self.pod_name
            )
        finally:
            self._terminate_all()
            if self._delete_after_stop:
                self.agent.finish_deletion(self.namespace, self.pod_name, self.uid)

    def _run(self) -> None:
        self._report("Pending")
        for slot in self.init_slots:
            if not self._run_init(slot):
                return
        for slot in self.slots:
            self._start(slot)
        self._report("Running")
        while not self._stop_requested.wait(0.1):
            changed = False
            for slot in self.slots:
                changed |= self._supervise(slot)
            if all(self._done(slot) for slot in self.slots):
                failed = any(slot.exit and slot.exit.exit_code != 0 for slot in self.slots)
                self._report("Failed" if failed else "Succeeded")
                return
            if changed:
                self._report("Running")

    def _run_init(self, slot: _ContainerSlot) -> bool:
        """Run an init container to success; False if the pod must stop."""
        while not self._stop_requested.is_set():
            self._start(slot)
            self._report("Pending")
            while slot.running is not None and slot.running.poll() is None:
                if self._stop_requested.wait(0.1):
                    return False
            exit_ = slot.running.poll() if slot.running else slot.exit
            if exit_ is not None and slot.running is not None:
                slot.exit = exit_
                slot.state = _terminated(exit_, slot.running.container_id)
            if slot.exit is not None and slot.exit.exit_code == 0:
                return True
            if self.restart_policy == "Never":
                self._report("Failed")
                return False
            slot.restart_count += 1
            self._stop_requested.wait(self._backoff(slot))
        return False

    def _backoff(self, slot: _ContainerSlot) -> float:
        return min(_MAX_BACKOFF_SECONDS, 0.5 * 2.0**slot.restart_count)

    def _done(self, slot: _ContainerSlot) -> bool:
        return slot.exit is not None and slot.restart_at == 0.0

    def _supervise(self, slot: _ContainerSlot) -> bool:
        """Notice exits and apply the restart policy; True if the status changed."""
        if slot.restart_at and time.monotonic() >= slot.restart_at:
            slot.restart_at = 0.0
            slot.restart_count += 1
            slot.last_state = slot.state
            slot.exit = None
            self._start(slot)
            return True
        if slot.running is None or slot.exit is not None:
            return False
        exit_ = slot.running.poll()
        if exit_ is None:
            return False
        slot.exit = exit_
        slot.state = _terminated(exit_, slot.running.container_id)
        restart = self.restart_policy == "Always" or (
            self.restart_policy == "OnFailure" and exit_.exit_code != 0
        )
        if restart:
            slot.restart_at = time.monotonic() + self._backoff(slot)
        return True

    def _start(self, slot: _ContainerSlot) -> None:
        spec = slot.spec
        while not self._stop_requested.is_set():
            try:
                env = self.agent.env_resolver.resolve(self.pod, spec)
                break
            except EnvConfigError as err:
                slot.state = {
                    "waiting": {"reason": "CreateContainerConfigError", "message": str(err)}
                }
                self._report("Pending")
                self._stop_requested.wait(1.0)
        else:
            return
        run = ContainerRun(
            namespace=self.namespace,
            pod_name=self.pod_name,
            pod_uid=self.uid,
            name=spec.name,
            image=spec.image or "",
            command=[expand(part, env) for part in [*(spec.command or []), *(spec.args or [])]],
            env=env,
            working_dir=spec.working_dir,
            termination_message_path=spec.termination_message_path or "/dev/termination-log",
            termination_message_policy=spec.termination_message_policy or "File",
        )
        workdir = self.workdir / spec.name / str(slot.restart_count)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            slot.running = self.agent.runner.start(run, workdir)
        except ContainerStartError as err:
            slot.running = None
            stamp = now()
            slot.exit = ContainerExit(128, "StartError", str(err), stamp, stamp)
            slot.state = _terminated(slot.exit, "")
            if self.restart_policy != "Never":
                slot.restart_at = time.monotonic() + self._backoff(slot)
            return
        # Keep a stable per-container log path for tests (latest run).
        link = self.log_path(spec.name)
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(slot.running.log_path)
        slot.state = {"running": {"startedAt": _ts(slot.running.started_at)}}

    def _terminate_all(self) -> None:
        for slot in [*self.init_slots, *self.slots]:
            if slot.running is not None and slot.running.poll() is None:
                slot.running.terminate(self._grace)

    # --- status --------------------------------------------------------------

    def _report(self, phase: str) -> None:
        ready = phase == "Running" and all("running" in s.state for s in self.slots)
        initialized = all(s.exit is not None and s.exit.exit_code == 0 for s in self.init_slots)
        stamp = _ts(now())

        def condition(kind: str, value: bool, reason: str | None = None) -> dict[str, Any]:
            cond: dict[str, Any] = {
                "type": kind,
                "status": "True" if value else "False",
                "lastTransitionTime": stamp,
            }
            if reason and not value:
                cond["reason"] = reason
            return cond

        done_reason = "PodCompleted" if phase in _TERMINAL else "ContainersNotReady"
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "podIP": HOST_IP,
            "podIPs": [{"ip": HOST_IP}],
            "startTime": _ts(self._start_time),
            "conditions": [
                condition("PodScheduled", True),
                condition("Initialized", initialized, "ContainersNotInitialized"),
                condition("ContainersReady", ready, done_reason),
                condition("Ready", ready, done_reason),
            ],
            "containerStatuses": [s.status() for s in self.slots],
        }
        if self.init_slots:
            status["initContainerStatuses"] = [s.status() for s in self.init_slots]
        self.agent.patch_status(self.namespace, self.pod_name, status)


class NodeAgent:
    """Start with `start()` (or as a context manager); `stop()` ends every pod."""

    def __init__(
        self,
        api: client.ApiClient,
        workdir: Path,
        *,
        node_name: str = NODE_NAME,
        namespaces: Iterable[str] | None = None,
        runner: Runner | None = None,
    ) -> None:
        self.api = api
        self.core = apis.core(api)
        self.workdir = workdir
        self.node_name = node_name
        self.namespaces = set(namespaces) if namespaces is not None else None
        self.runner: Runner = runner or LocalProcessRunner()
        self.env_resolver = EnvResolver(api, host_ip=HOST_IP)
        self._workers: dict[str, PodWorker] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher = threading.Thread(
            target=self._watch_loop, name="node-agent-watch", daemon=True
        )

    def __enter__(self) -> NodeAgent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._register_node()
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        self._watcher.join(timeout=15)
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.request_stop(finish_deletion=False, grace_seconds=2)
        for worker in workers:
            worker.join(timeout=15)
        with contextlib.suppress(apis.ApiException):
            self.core.delete_node(self.node_name)

    # --- for tests -------------------------------------------------------------

    def container_log(self, namespace: str, pod: str, container: str) -> str:
        """Output of the latest run of a container (no `kubectl logs` without kubelet)."""
        with self._lock:
            workers = [
                w for w in self._workers.values() if (w.namespace, w.pod_name) == (namespace, pod)
            ]
        if not workers:
            raise KeyError(f"node agent never ran pod {namespace}/{pod}")
        return workers[-1].log_path(container).read_text(errors="replace")

    # --- node ------------------------------------------------------------------

    def _register_node(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "feedline.dev/test-node-agent": "true",
                },
            },
        }
        try:
            self.core.create_node(body)
        except apis.ApiException as err:
            if err.status != 409:
                raise
        stamp = _ts(now())
        resources = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        status = {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "FeedlineNodeAgentReady",
                    "message": "test node agent (local processes)",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": self.node_name},
            ],
            "capacity": resources,
            "allocatable": resources,
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": "",
                "osImage": "feedline test node agent",
                "containerRuntimeVersion": "local-process://0",
                "kubeletVersion": "v0.0.0-feedline-node-agent",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        self.core.patch_node_status(self.node_name, {"status": status}, _content_type=_MERGE_PATCH)

    # --- pods ------------------------------------------------------------------

    def _watch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                pods = self.core.list_pod_for_all_namespaces()
                for pod in pods.items:
                    self._handle(pod)
                self._watch(pods.metadata.resource_version)
            except Exception:  # relist on 410 Gone, dropped connections, ...
                if self._stop.is_set():
                    return
                log.warning("node agent: watch failed, relisting", exc_info=True)
                self._stop.wait(1.0)

    def _watch(self, resource_version: str) -> None:
        while not self._stop.is_set():
            stream: Any = cast(Any, watch).Watch()
            # Short server-side timeout so stop() is noticed within seconds.
            for event in stream.stream(
                self.core.list_pod_for_all_namespaces,
                resource_version=resource_version,
                timeout_seconds=3,
                allow_watch_bookmarks=True,
                _request_timeout=15,
            ):
                pod = event["object"]
                resource_version = pod.metadata.resource_version
                if event["type"] == "DELETED":
                    self._forget(pod)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    self._handle(pod)
                if self._stop.is_set():
                    stream.stop()
                    return

    def _wanted(self, pod: Any) -> bool:
        return self.namespaces is None or pod.metadata.namespace in self.namespaces

    def _handle(self, pod: Any) -> None:
        if not self._wanted(pod):
            return
        meta, spec = pod.metadata, pod.spec
        phase = pod.status.phase if pod.status else None
        with self._lock:
            worker = self._workers.get(meta.uid)
        if meta.deletion_timestamp is not None:
            if worker is not None:
                worker.request_stop(
                    finish_deletion=True, grace_seconds=meta.deletion_grace_period_seconds
                )
            elif spec.node_name == self.node_name:
                self.finish_deletion(meta.namespace, meta.name, meta.uid)
            return
        if not spec.node_name:
            if phase == "Pending" and not spec.scheduling_gates:
                self._bind(pod)
            return
        if spec.node_name != self.node_name or worker is not None or phase in _TERMINAL:
            return
        worker = PodWorker(self, pod)
        with self._lock:
            self._workers[meta.uid] = worker
        worker.start()

    def _forget(self, pod: Any) -> None:
        with self._lock:
            worker = self._workers.get(pod.metadata.uid)
        if worker is not None:
            worker.request_stop(finish_deletion=False, grace_seconds=2)

    def _bind(self, pod: Any) -> None:
        body = client.V1Binding(
            metadata=client.V1ObjectMeta(name=pod.metadata.name, uid=pod.metadata.uid),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=self.node_name),
        )
        try:
            # _preload_content=False: the client cannot deserialize the Status it returns.
            self.core.create_namespaced_pod_binding(
                pod.metadata.name, pod.metadata.namespace, body, _preload_content=False
            )
        except apis.ApiException as err:
            if err.status not in (404, 409):  # gone, or bound meanwhile
                raise

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            self.core.patch_namespaced_pod_status(
                name, namespace, {"status": status}, _content_type=_MERGE_PATCH
            )
        except apis.ApiException as err:
            if err.status != 404:  # deleted meanwhile
                log.warning("node agent: status of %s/%s: %s", namespace, name, err.body)

    def finish_deletion(self, namespace: str, name: str, uid: str) -> None:
        """What a kubelet does once containers are gone: delete with grace 0."""
        with contextlib.suppress(apis.ApiException):
            self.core.delete_namespaced_pod(
                name,
                namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
                ),
            )
