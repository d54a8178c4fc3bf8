"""A throwaway PostgreSQL server for integration tests and benchmarks.

Started from the machine's own PostgreSQL binaries (initdb + postgres) on a
free loopback port with its data in a temporary folder, or taken from
``FEEDLINE_TEST_DATABASE_URL`` when that names an existing server.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.support.ports import free_port
from tests.support.processes import stop

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, postgres) were not found. Install them with "
    "`apt-get install postgresql` (Debian) or point FEEDLINE_TEST_DATABASE_URL at a server."
)


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"


def find_bin_dir() -> Path:
    """The folder holding initdb and postgres, newest major version first."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        # Debian links initdb and postgres onto PATH; pg_isready sits beside the targets.
        return Path(on_path).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name),
        reverse=True,
    )
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    raise RuntimeError(INSTALL_HINT)


def _as_postgres_user() -> list[str]:
    # The server refuses to run as root; as root we switch to the `postgres` account.
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise RuntimeError(
            "running as root but there is no `postgres` user to run the server"
        ) from exc
    return ["runuser", "-u", "postgres", "--"]


def _wait_ready(
    bin_dir: Path, port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30
) -> None:
    # An open port is not enough: during start-up the server answers "the
    # database system is starting up". pg_isready says when it takes sessions.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited early:\n{log.read_text()[-3000:]}")
        ready = subprocess.run(
            [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)], check=False
        )
        if ready.returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"postgres did not accept connections in {timeout}s:\n{log.read_text()[-3000:]}"
    )


@contextlib.contextmanager
def throwaway_postgres(
    *, durable: bool = False, port: int | None = None
) -> Iterator[PostgresServer]:
    """Run a private PostgreSQL server for the duration of the block.

    ``durable=False`` turns off fsync and friends: tests need isolation, not
    crash durability. Benchmarks pass ``durable=True`` so their ratios mean what
    they say. ``port``: where it listens (default: a free one), for a test whose
    client was told the address before the server existed.
    """
    bin_dir = find_bin_dir()
    prefix = _as_postgres_user()
    workdir = Path(tempfile.mkdtemp(prefix="feedline-pg-"))
    data, sockets, log = workdir / "data", workdir / "sockets", workdir / "server.log"
    sockets.mkdir()
    if prefix:
        shutil.chown(workdir, "postgres")
        shutil.chown(sockets, "postgres")
    os.chmod(workdir, 0o755)  # noqa: S103 - the postgres user must reach its data dir
    subprocess.run(
        [
            *prefix,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    port = port or free_port()
    settings = ["-c", "max_connections=200"]
    if not durable:
        settings += [
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [
                *prefix,
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(sockets),
                "-c",
                "listen_addresses=127.0.0.1",
                *settings,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(bin_dir, port, proc, log)
        yield PostgresServer(host="127.0.0.1", port=port, user="postgres")
    finally:
        stop(proc, grace_seconds=20)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def fresh_database(server_url: str, prefix: str = "t") -> AsyncIterator[str]:
    """A new, empty database on the server at ``server_url``; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
