"""kubectl and helm as a user runs them, against the e2e cluster."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class E2ECluster:
    kubeconfig: Path
    kubectl_binary: Path
    helm_binary: Path
    helm_home: Path
    # True: the node of tests/support/node (images from its registry);
    # False: FEEDLINE_TEST_KUBECONFIG (e.g. kind, images loaded by `make kind-up`).
    on_node: bool

    def _run(
        self,
        binary: Path,
        args: tuple[str, ...],
        *,
        check: bool,
        timeout: float,
        env: dict[str, str] | None = None,
    ) -> str:
        proc = subprocess.run(
            [str(binary), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=timeout,
        )
        if check:
            assert proc.returncode == 0, (
                f"{binary.name} {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        return proc.stdout

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        return self._run(self.kubectl_binary, args, check=check, timeout=timeout)

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json"))

    def helm(self, *args: str, timeout: float = 600) -> str:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(self.helm_home / "cache"),
            "HELM_CONFIG_HOME": str(self.helm_home / "config"),
            "HELM_DATA_HOME": str(self.helm_home / "data"),
        }
        return self._run(self.helm_binary, args, check=True, timeout=timeout, env=env)


def http_json(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - the cluster's own Service/pod addresses
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as err:
        text = err.read()
        try:
            return err.code, json.loads(text)
        except ValueError:
            return err.code, text.decode(errors="replace")


def retry_http(
    method: str, url: str, body: Any = None, timeout: float = 60, **kwargs: Any
) -> tuple[int, Any]:
    """The first answer that is not a connection error (a fresh ClusterIP may lag)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return http_json(method, url, body, **kwargs)
        except (urllib.error.URLError, OSError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


class PortForwards:
    """`kubectl port-forward service/NAME :PORT` per Service, for clusters whose
    ClusterIPs the host cannot reach (kind); closed with `close()`."""

    def __init__(self, cluster: E2ECluster) -> None:
        self.cluster = cluster
        self._urls: dict[tuple[str, str], str] = {}
        self._processes: list[subprocess.Popen[str]] = []

    def url(self, namespace: str, service: str, port: int = 80) -> str:
        key = (namespace, service)
        if key not in self._urls:
            proc = subprocess.Popen(
                [
                    str(self.cluster.kubectl_binary),
                    f"--kubeconfig={self.cluster.kubeconfig}",
                    "-n", namespace, "port-forward", f"service/{service}", f":{port}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
            self._processes.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:40123 -> 8080"
            found = re.search(r"127\.0\.0\.1:(\d+)", line)
            assert found, f"kubectl port-forward service/{service}: {line}"
            self._urls[key] = f"http://127.0.0.1:{found.group(1)}"
        return self._urls[key]

    def close(self) -> None:
        for proc in self._processes:
            proc.terminate()
            proc.wait(10)
