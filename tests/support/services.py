"""Run real Feedline services as processes on loopback, as a user would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tests.support.ports import free_port
from tests.support.processes import stop

FEEDLINE = str(Path(sys.executable).with_name("feedline"))


def wait_until_ready(
    base_url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/health/ready", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"service not ready after {timeout}s:\n{log.read_text()[-4000:]}")


@contextlib.contextmanager
def running_service(
    name: str, database_url: str | None, *, cwd: Path | None = None, **env: str
) -> Iterator[str]:
    """Start ``feedline serve NAME`` on a free loopback port; yield its base URL.

    Extra keyword arguments become environment variables (``FEEDLINE_...``).
    ``database_url=None`` passes none: the service picks its default, in ``cwd``.
    """
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_dir = Path(tempfile.mkdtemp(prefix=f"feedline-{name}-"))
    log = log_dir / "service.log"
    environment = {**os.environ, **env, "FEEDLINE_HTTP_CACHE_DIR": str(log_dir)}
    argv = [FEEDLINE, "serve", name, "--port", str(port)]
    if database_url is None:
        environment.pop("FEEDLINE_DATABASE_URL", None)
    else:
        argv += ["--database-url", database_url]
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, env=environment, cwd=cwd
        )
    try:
        wait_until_ready(base_url, proc, log)
        yield base_url
    finally:
        stop(proc, grace_seconds=10)


@dataclass
class ServiceProcess:
    """``feedline serve NAME`` on ports fixed for its life, so it can be killed and started
    again where its readers expect it (a pod restarted behind its Service).

    ``grpc_port``: its gRPC feed's port (FEEDLINE_GRPC_PORT), or None for none. Each
    start appends to the same ``log``.
    """

    name: str
    database_url: str
    port: int
    grpc_port: int | None
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        """``host:port`` of the gRPC feed."""
        assert self.grpc_port is not None, "started without a gRPC port"
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        """Start it and wait until it is ready; raises if it exits or is not ready in 30 s."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        environment = {
            **os.environ,
            **self.env,
            "FEEDLINE_HTTP_CACHE_DIR": str(self.log.parent),
        }
        if self.grpc_port is not None:
            environment["FEEDLINE_GRPC_PORT"] = str(self.grpc_port)
        argv = [FEEDLINE, "serve", self.name, "--port", str(self.port)]
        argv += ["--database-url", self.database_url]
        with open(self.log, "ab") as log_file:
            self.proc = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, env=environment
            )
        self.starts += 1
        wait_until_ready(self.base_url, self.proc, self.log)

    def kill(self) -> None:
        """SIGKILL: no shutdown at all (streams and long polls cut, nothing flushed)."""
        assert self.proc is not None, "never started"
        assert self.proc.poll() is None, "not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop(self.proc, grace_seconds=10)


@contextlib.contextmanager
def restartable_service(
    name: str, database_url: str, *, grpc: bool = True, **env: str
) -> Iterator[ServiceProcess]:
    """A started :class:`ServiceProcess` on free loopback ports (and a gRPC port when
    ``grpc``); stopped at the end, whatever state the test left it in."""
    log_dir = Path(tempfile.mkdtemp(prefix=f"feedline-{name}-"))
    service = ServiceProcess(
        name,
        database_url,
        port=free_port(),
        grpc_port=free_port() if grpc else None,
        env=env,
        log=log_dir / "service.log",
    )
    try:
        service.start()
        yield service
    finally:
        service.stop()


@contextlib.contextmanager
def serving_in_thread(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port, in a thread.

    Real HTTP, but no process start-up: for tests that build apps with
    ``create_app`` and their own settings.
    """
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the app did not start; see the log above")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
