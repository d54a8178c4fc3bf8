"""Recognisable secrets ("canaries") for the leak tests, and the real servers that take them.

A canary is a random value with a fixed prefix (``leak-canary-``): a database
password, a feed token, a broker password. The tests give them to every part
(real PostgreSQL roles, a real RabbitMQ user, real processes) and then search
every output for them; any hit is a leak. Canaries are plain ``[a-z0-9-]`` so
that URL-encoding cannot disguise one.

``password_database``: a PostgreSQL role that logs in with a password only
(a ``scram-sha-256`` line for it goes first in the server's ``pg_hba.conf``;
the fixture's server trusts everyone else) and a database it owns.
``add_rabbitmq_user``: a RabbitMQ user with a password, allowed everything on
``/``, added with the node's own ``rabbitmqctl``.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from tests.support.rabbitmq import RABBITMQ_SERVER, RabbitMQNode

PREFIX = "leak-canary-"
RABBITMQCTL = RABBITMQ_SERVER.with_name("rabbitmqctl")


def canary(kind: str) -> str:
    return f"{PREFIX}{kind}-{secrets.token_hex(8)}"


@dataclass(frozen=True)
class Canaries:
    """Every secret a leak test hands out; ``found_in`` says which ones a text holds."""

    db_password: str = field(default_factory=lambda: canary("db"))
    wrong_db_password: str = field(default_factory=lambda: canary("wrongdb"))
    feed_token: str = field(default_factory=lambda: canary("token"))
    wrong_feed_token: str = field(default_factory=lambda: canary("wrongtoken"))
    broker_password: str = field(default_factory=lambda: canary("mq"))
    wrong_broker_password: str = field(default_factory=lambda: canary("wrongmq"))
    bad_dsn_password: str = field(default_factory=lambda: canary("baddsn"))

    def all(self) -> list[str]:
        return [
            self.db_password,
            self.wrong_db_password,
            self.feed_token,
            self.wrong_feed_token,
            self.broker_password,
            self.wrong_broker_password,
            self.bad_dsn_password,
        ]

    def found_in(self, text: str) -> list[str]:
        # Also in the text without blanks and box-drawing rules: a terminal-wide error box
        # (typer's) may wrap a canary over two lines. The prefix alone catches a canary
        # cut short (a truncated message).
        squeezed = re.sub(r"[\s\u2500-\u257f]+", "", text)
        found = [value for value in self.all() if value in text or value in squeezed]
        return found or ([PREFIX] if PREFIX in squeezed else [])


@dataclass
class Outputs:
    """Every output a test collected, by where it came from; ``leaks`` lists the hits."""

    canaries: Canaries
    texts: dict[str, str] = field(default_factory=dict)

    def add(self, where: str, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        self.texts[where] = self.texts.get(where, "") + text

    def add_file(self, where: str, path: Path) -> None:
        self.add(where, path.read_bytes() if path.exists() else b"")

    def add_files(self, where: str, paths: Iterable[Path]) -> None:
        for path in paths:
            if path.is_file():
                self.add(f"{where} {path.name}", path.read_bytes())

    def leaks(self) -> list[str]:
        hits = []
        for where, text in self.texts.items():
            for found in self.canaries.found_in(text):
                at = text.find(found)
                hits.append(f"{where}: {found!r} in ...{text[max(0, at - 200) : at + 80]!r}")
        return hits

    def assert_no_leak(self) -> None:
        leaks = self.leaks()
        assert not leaks, "secrets leaked:\n" + "\n".join(leaks)
        assert self.texts, "nothing was collected"


def _with_password(server_url: str, role: str, password: str, database: str) -> str:
    parts = urlsplit(server_url)
    return f"postgresql://{role}:{password}@{parts.hostname}:{parts.port or 5432}/{database}"


def _prepend(hba: Path, line: str) -> None:
    hba.write_text(line + hba.read_text())


def _remove(hba: Path, line: str) -> None:
    hba.write_text(hba.read_text().replace(line, ""))


@contextlib.asynccontextmanager
async def password_database(server_url: str, password: str) -> AsyncIterator[str]:
    """A role that must log in with ``password`` and a database it owns; yields its DSN.

    The role's hba line is added at the top of ``pg_hba.conf`` (this machine's
    server: the file is read from ``SHOW hba_file``) and removed afterwards.
    """
    role = f"canary_{uuid.uuid4().hex[:10]}"
    database = f"{role}_db"
    admin = await asyncpg.connect(server_url)
    try:
        hba = Path(await admin.fetchval("SHOW hba_file"))
        line = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
        _prepend(hba, line)
        await admin.execute("SELECT pg_reload_conf()")
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await admin.execute(f'CREATE DATABASE "{database}" OWNER {role}')
    finally:
        await admin.close()
    try:
        yield _with_password(server_url, role, password, database)
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await admin.execute(f"DROP ROLE IF EXISTS {role}")
            _remove(hba, line)
            await admin.execute("SELECT pg_reload_conf()")
        finally:
            await admin.close()


def wrong_password(dsn: str, password: str) -> str:
    """The DSN with another password (a login the server refuses)."""
    parts = urlsplit(dsn)
    assert parts.password is not None
    return dsn.replace(f":{parts.password}@", f":{password}@", 1)


def add_rabbitmq_user(node: RabbitMQNode, user: str, password: str) -> str:
    """A user of ``node`` with ``password`` and every permission on ``/``; its stream URL."""

    def ctl(*args: str) -> None:
        subprocess.run(
            [str(RABBITMQCTL), "-n", node.nodename, *args],
            env=node.environment(),
            cwd=node.folder,
            check=True,
            capture_output=True,
            timeout=120,
        )

    ctl("add_user", user, password)
    ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    return f"rabbitmq-stream://{user}:{password}@127.0.0.1:{node.stream_port}/%2F"
