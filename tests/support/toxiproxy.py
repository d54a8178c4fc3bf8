"""A real fault proxy between the processes under test: toxiproxy-server on loopback.

``tools/toxiproxy/build.sh`` builds toxiproxy-server from the Go module proxy at
a pinned version (``make toxiproxy``); :func:`find_toxiproxy_server` finds it
with ``build.sh --check`` (``FEEDLINE_TOXIPROXY_BIN`` overrides), so a test run
never starts a build by surprise. :func:`running_toxiproxy` starts the server on
a free loopback port and drives it through its HTTP API with httpx:
:meth:`Toxiproxy.proxy` puts a TCP proxy on a free loopback port in front of an
upstream, :meth:`Proxy.add` injects a toxic (latency, bandwidth, timeout,
reset_peer, ...) into the live connections and every new one, and
:meth:`Proxy.remove` takes it away again.

The server's log (``Toxiproxy.log``, JSON lines) has one ``Accepted client`` line per
connection a proxy accepted: :meth:`Proxy.accepted` counts them, which is how
a test shows that its faults cut connections (each cut one is opened again).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.ports import free_port
from tests.support.processes import stop

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tools" / "toxiproxy" / "build.sh"
BIN_ENV = "FEEDLINE_TOXIPROXY_BIN"
HOW_TO_BUILD = "run `make toxiproxy` (tools/toxiproxy/build.sh) to build it"


class MissingToxiproxyError(RuntimeError):
    """toxiproxy-server is not built."""


def find_toxiproxy_server() -> Path:
    """The toxiproxy-server binary: ``$FEEDLINE_TOXIPROXY_BIN/toxiproxy-server``, else
    the cache folder ``build.sh --check`` names. Raises MissingToxiproxyError."""
    override = os.environ.get(BIN_ENV)
    if override:
        directory = Path(override)
    else:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--check"], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise MissingToxiproxyError(
                proc.stderr.strip() or f"no toxiproxy-server: {HOW_TO_BUILD}"
            )
        directory = Path(proc.stdout.strip().splitlines()[-1])
    binary = directory / "toxiproxy-server"
    if not os.access(binary, os.X_OK):
        raise MissingToxiproxyError(f"missing {binary}: {HOW_TO_BUILD}")
    return binary


@dataclass
class Proxy:
    """One TCP proxy: clients dial ``listen``, it dials ``upstream``."""

    server: Toxiproxy
    name: str
    port: int
    upstream: str
    toxics: list[str] = field(default_factory=list)

    @property
    def listen(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(
        self,
        kind: str,
        *,
        stream: str = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
        **attributes: Any,
    ) -> str:
        """Inject a toxic (``kind``: latency, bandwidth, timeout, reset_peer, slicer,
        limit_data, slow_close) into this proxy's live connections and every new one.

        ``stream``: ``downstream`` (upstream -> client) or ``upstream`` (client -> upstream).
        Returns its name, for :meth:`remove`.
        """
        toxic = name or f"{kind}_{stream}_{len(self.toxics)}"
        self.server.call(
            "POST",
            f"/proxies/{self.name}/toxics",
            json={
                "name": toxic,
                "type": kind,
                "stream": stream,
                "toxicity": toxicity,
                "attributes": attributes,
            },
        )
        self.toxics.append(toxic)
        return toxic

    def remove(self, toxic: str) -> None:
        self.server.call("DELETE", f"/proxies/{self.name}/toxics/{toxic}")
        self.toxics.remove(toxic)

    def clear(self) -> None:
        """Remove every toxic this proxy has."""
        for toxic in list(self.toxics):
            self.remove(toxic)

    @contextlib.contextmanager
    def toxic(self, kind: str, **options: Any) -> Iterator[str]:
        """:meth:`add` for the ``with`` block, then :meth:`remove`."""
        name = self.add(kind, **options)
        try:
            yield name
        finally:
            self.remove(name)

    def set_enabled(self, enabled: bool) -> None:
        """Disabled, the proxy closes every connection and refuses new ones."""
        self.server.call("POST", f"/proxies/{self.name}", json={"enabled": enabled})

    def accepted(self) -> int:
        """How many client connections this proxy has accepted so far (its log lines)."""
        return sum(
            1
            for entry in self.server.log_entries()
            if entry.get("message") == "Accepted client" and entry.get("name") == self.name
        )


@dataclass
class Toxiproxy:
    """A running toxiproxy-server; its API at ``api``."""

    api: str
    log: Path
    _client: httpx.Client = field(repr=False)
    proxies: dict[str, Proxy] = field(default_factory=dict)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self._client.request(method, f"{self.api}{path}", **kwargs)
        if answer.status_code >= 300:
            raise RuntimeError(f"toxiproxy {method} {path}: {answer.status_code} {answer.text}")
        return answer.json() if answer.content else None

    def proxy(self, name: str, upstream: str) -> Proxy:
        """A new proxy on a free loopback port in front of ``upstream`` (``host:port``)."""
        port = free_port()
        self.call(
            "POST",
            "/proxies",
            json={
                "name": name,
                "listen": f"127.0.0.1:{port}",
                "upstream": upstream,
                "enabled": True,
            },
        )
        created = Proxy(self, name, port, upstream)
        self.proxies[name] = created
        return created

    def version(self) -> str:
        return str(self.call("GET", "/version")["version"])

    def log_entries(self) -> list[dict[str, Any]]:
        """The server's log so far, one JSON object a line."""
        entries = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    entries.append(entry)
        return entries


@contextlib.contextmanager
def running_toxiproxy(workdir: Path) -> Iterator[Toxiproxy]:
    """toxiproxy-server on a free loopback port, its log in ``workdir``; stopped at the end."""
    binary = find_toxiproxy_server()
    port = free_port()
    log = workdir / "toxiproxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(binary), "-host", "127.0.0.1", "-port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "LOG_LEVEL": "info"},  # one JSON line per connection
        )
    api = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=10) as client:
            deadline = time.monotonic() + 15
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"toxiproxy-server exited with {process.returncode}:\n"
                        f"{log.read_text(errors='replace')[-2000:]}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{api}/version").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"toxiproxy-server not up after 15 s at {api}")
                time.sleep(0.05)
            yield Toxiproxy(api, log, client)
    finally:
        stop(process, grace_seconds=5)
