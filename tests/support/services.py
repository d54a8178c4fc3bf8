"""Run real Feedline services as processes on loopback, as a user would."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
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
