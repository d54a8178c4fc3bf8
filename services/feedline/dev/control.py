"""`feedline dev run-now NAME`: asking the running `feedline dev` to run a subscription now.

While it runs, `feedline dev` listens on a free loopback port for
``POST /run-now/NAME`` and writes ``STATE/control.json`` (mode 0600): its
pid, that URL and a random token every request must carry (``Authorization:
Bearer``), so only who can read the state directory can ask. The answer says
what happened (a run started, queued behind the running one, or why not). The
file is removed when `feedline dev` stops; one left by a `feedline dev` that
was killed names a port nothing listens on any more, which the client reports
as "not running".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote

import httpx

CONTROL_FILE = "control.json"
RUN_NOW_PATH = "/run-now/"
READ_TIMEOUT_SECONDS = 5.0
REASONS = {
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    409: "Conflict",
}

# What `feedline dev` does with a run-now for a name: (HTTP status, message).
RunNow = Callable[[str], tuple[int, str]]


class ControlError(RuntimeError):
    """No running `feedline dev` to ask, or it refused; the message says which."""


def control_file(state_dir: Path) -> Path:
    return state_dir / CONTROL_FILE


class ControlServer:
    """The loopback endpoint of a running `feedline dev`, and its control.json."""

    def __init__(self, state_dir: Path, run_now: RunNow) -> None:
        self.path = control_file(state_dir)
        self.run_now = run_now
        self.token = secrets.token_urlsafe(24)
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        document = {"pid": os.getpid(), "url": self.url, "token": self.token}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(document, out)
        tmp.replace(self.path)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
        self.path.unlink(missing_ok=True)

    def _answer(self, head: str) -> tuple[int, str]:
        lines = head.split("\r\n")
        method, _, rest = lines[0].partition(" ")
        target = rest.partition(" ")[0]
        headers = {
            key.strip().lower(): value.strip()
            for key, _, value in (line.partition(":") for line in lines[1:] if ":" in line)
        }
        given = headers.get("authorization", "").encode("latin-1")
        if not secrets.compare_digest(given, f"Bearer {self.token}".encode()):
            return 401, f"a token from {self.path} is required"
        if method != "POST" or not target.startswith(RUN_NOW_PATH):
            return 404, f"only POST {RUN_NOW_PATH}NAME is served here"
        name = unquote(target[len(RUN_NOW_PATH) :])
        if not name:
            return 400, "no subscription name"
        return self.run_now(name)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_SECONDS)
            status, message = self._answer(head.decode("latin-1"))
            body = json.dumps({"message": message}).encode()
            writer.write(
                f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


def ask_run_now(state_dir: Path, name: str) -> str:
    """Ask the `feedline dev` that uses ``state_dir`` to run ``name`` now; its answer."""
    path = control_file(state_dir)
    try:
        document = json.loads(path.read_text())
        url, token, pid = document["url"], document["token"], document["pid"]
    except FileNotFoundError:
        raise ControlError(
            f"no feedline dev is running with the state directory {state_dir} (no {path}; "
            "one that is starting writes it when its services are ready); "
            "give the folder it runs: feedline dev run-now NAME DIR (or --state-dir)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ControlError(f"cannot read {path}: {exc}") from exc
    try:
        response = httpx.post(
            f"{url}{RUN_NOW_PATH}{quote(name, safe='')}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10.0,
        )
    except httpx.HTTPError as exc:
        raise ControlError(
            f"the feedline dev (pid {pid}) that wrote {path} does not answer at {url} "
            f"({exc}): it is not running any more"
        ) from exc
    try:
        message = str(response.json()["message"])
    except (ValueError, KeyError, TypeError):
        message = response.text
    if response.status_code != 202:
        raise ControlError(message)
    return message
