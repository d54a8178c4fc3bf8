"""Secrets never leak: every part runs with recognisable secrets, every output is searched.

The secrets are canaries (tests/support/secret_canaries.py): a database
password (a real PostgreSQL role that must log in with it), a feed token
(``FEEDLINE_FEED_AUTH=Token``) and a broker password (a real RabbitMQ user),
plus wrong ones and bad URLs for the failing paths. Each test runs real
processes on the happy path and on failing paths (a refused login, which
drivers answer with messages that may quote the DSN; an unreachable broker
or one refusing the password; a refused token; DSNs and broker URLs the
settings refuse) and searches ALL their outputs:

- ``feedline serve``: every log line (stdout and stderr), the ``/metrics``,
  ``/health/*`` and ``/openapi.json`` bodies, error bodies (400, 401, 404,
  405, 422) and every response header, and ``/health/ready``'s 503 once its
  logins are refused;
- ``feedline subscribe``: its summary line (stdout), its log (stderr), its
  termination message, and in Follow mode ``/summary`` and ``/healthz``;
- ``feedline dev``: its output, ``status.json``, and every file of its state
  directory but the databases (logs, termination logs).

The operator's outputs (EventSubscription status, Kubernetes Events, its log)
are searched in tests/cluster/test_secrets_leak.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from feedline_contracts.broker import stream_name
from feedline_contracts.subscriber_env import BROKER_STREAM
from tests.support.ports import free_port
from tests.support.rabbitmq import RabbitMQNode
from tests.support.secret_canaries import (
    Canaries,
    Outputs,
    add_rabbitmq_user,
    canary,
    password_database,
    wrong_password,
)
from tests.support.services import FEEDLINE, wait_until_ready
from tests.support.subscriber_broker import fresh_stream, metric
from tests.support.subscriber_process import LOYALTY, subscriber_env
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

SERVICE = "special-offers"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "local"


@pytest.fixture
def canaries() -> Canaries:
    return Canaries()


@pytest.fixture
def outputs(canaries: Canaries) -> Outputs:
    return Outputs(canaries)


@pytest.fixture
async def service_dsn(postgres_server_url: str, canaries: Canaries) -> AsyncIterator[str]:
    async with password_database(postgres_server_url, canaries.db_password) as dsn:
        yield dsn


@pytest.fixture
async def read_model_dsn(postgres_server_url: str, canaries: Canaries) -> AsyncIterator[str]:
    async with password_database(postgres_server_url, canaries.db_password) as dsn:
        yield dsn


@pytest.fixture
def broker_url(rabbitmq: RabbitMQNode, canaries: Canaries) -> str:
    fresh_stream(rabbitmq)
    return add_rabbitmq_user(rabbitmq, f"canary-{os.urandom(4).hex()}", canaries.broker_password)


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without FEEDLINE_* variables, plus ``settings``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FEEDLINE_")}
    return {**environment, **settings, "PYTHONUNBUFFERED": "1"}


def record_response(outputs: Outputs, where: str, response: httpx.Response) -> None:
    headers = "\n".join(f"{name}: {value}" for name, value in response.headers.items())
    outputs.add(where, f"{response.status_code}\n{headers}\n{response.text}\n")


def run(
    outputs: Outputs, where: str, argv: list[str], env: dict[str, str], timeout: float = 60
) -> int:
    """Run a process to its end (killed after ``timeout``); both its streams are recorded."""
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    outputs.add(f"{where} stdout", stdout)
    outputs.add(f"{where} stderr", stderr)
    return process.returncode


@contextlib.contextmanager
def serving(
    outputs: Outputs, where: str, database_url: str, log_dir: Path, **settings: str
) -> Iterator[str]:
    """``feedline serve`` (stdout and stderr to files, recorded when it stops); its base URL."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    stdout, stderr = log_dir / "stdout", log_dir / "stderr"
    environment = clean_env(
        FEEDLINE_DATABASE_URL=database_url, FEEDLINE_HTTP_CACHE_DIR=str(log_dir), **settings
    )
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        process = subprocess.Popen(
            [FEEDLINE, "serve", SERVICE, "--port", str(port)],
            stdout=out,
            stderr=err,
            env=environment,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, process, stderr)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        outputs.add_file(f"{where} stdout", stdout)
        outputs.add_file(f"{where} stderr", stderr)


def refuse_logins(dsn: str) -> None:
    """Give the DSN's role another password and end its sessions: new logins are refused."""

    async def change() -> None:
        host = dsn.rsplit("@", 1)[1].split("/", 1)[0]
        admin = await asyncpg.connect(f"postgresql://postgres@{host}/postgres")
        try:
            role = dsn.split("//", 1)[1].split(":", 1)[0]
            await admin.execute(f"ALTER ROLE {role} PASSWORD '{canary('rotated')}'")
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
            )
        finally:
            await admin.close()

    asyncio.run(change())


def closed_port_url(password: str) -> str:
    return f"rabbitmq-stream://canary:{password}@127.0.0.1:{free_port()}/%2F"


def no_database(dsn: str, password: str) -> str:
    """A DSN the settings refuse (it names no database), with ``password`` in it."""
    return wrong_password(dsn, password).rsplit("/", 1)[0]


# --- feedline serve ----------------------------------------------------------------------


def test_a_service_leaks_no_secret(
    canaries: Canaries, outputs: Outputs, service_dsn: str, broker_url: str, tmp_path: Path
) -> None:
    """Its log lines and every HTTP answer, with a DSN password, a feed token and a broker
    password: on the happy path, on refused requests, and once its logins are refused."""
    settings = {
        "FEEDLINE_FEED_AUTH": "Token",
        "FEEDLINE_FEED_TOKEN": canaries.feed_token,
        "FEEDLINE_BROKER_URL": broker_url,
        "FEEDLINE_LOG_LEVEL": "DEBUG",
    }
    with (
        serving(outputs, "serve", service_dsn, tmp_path / "serve", **settings) as base,
        httpx.Client(base_url=base, timeout=30) as http,
    ):
        good = {"Authorization": f"Bearer {canaries.feed_token}"}
        wrong = {"Authorization": f"Bearer {canaries.wrong_feed_token}"}
        for number in range(3):
            created = http.post("/offers", json={"description": f"offer {number}"})
            assert created.status_code == 201, created.text
            record_response(outputs, "POST /offers", created)
        answers = {
            "GET /events (token)": http.get("/events", headers=good),
            "GET /events (no token)": http.get("/events"),
            "GET /events (wrong token)": http.get("/events", headers=wrong),
            "GET /events/head (wrong token)": http.get("/events/head", headers=wrong),
            "GET /events (bad query)": http.get("/events?limit=0", headers=good),
            "GET /offers/999": http.get("/offers/999"),
            "GET /offers/abc": http.get("/offers/abc"),
            "POST /offers (bad body)": http.post("/offers", json={"x": 1}),
            "PATCH /offers/1": http.patch("/offers/1"),
            "GET /health/live": http.get("/health/live"),
            "GET /health/ready": http.get("/health/ready"),
            "GET /openapi.json": http.get("/openapi.json"),
        }
        assert answers["GET /events (token)"].status_code == 200
        assert answers["GET /events (wrong token)"].status_code == 401
        # The relay publishes the three events, as the broker user with its password.
        wait_for(
            lambda: metric(base, "feedline_broker_relay_confirmed_sequence") >= 3,
            timeout=60,
            what="the relay to publish",
        )
        answers["GET /metrics"] = http.get("/metrics")
        refuse_logins(service_dsn)
        answers["GET /health/ready (login refused)"] = http.get("/health/ready")
        assert answers["GET /health/ready (login refused)"].status_code == 503
        for where, response in answers.items():
            record_response(outputs, where, response)
    outputs.assert_no_leak()


def test_a_service_that_cannot_start_or_relay_leaks_no_secret(
    canaries: Canaries, outputs: Outputs, service_dsn: str, rabbitmq: RabbitMQNode, tmp_path: Path
) -> None:
    """A refused login, DSNs and broker URLs the settings refuse, a broker that is not
    there and one that refuses the password: each said in a line that names no secret."""
    bad = canaries.bad_dsn_password
    failing_starts = {
        "wrong password": wrong_password(service_dsn, canaries.wrong_db_password),
        "no database": no_database(service_dsn, bad),
        "unsupported scheme": "mysql://user:" + bad + "@127.0.0.1/db",
        "unparsable": "postgresql://user:" + bad + "@[::1/db",
        "unreachable": f"postgresql://user:{bad}@127.0.0.1:{free_port()}/db",
    }
    for case, dsn in failing_starts.items():
        code = run(
            outputs,
            f"serve ({case})",
            [FEEDLINE, "serve", SERVICE, "--port", str(free_port()), "--database-url", dsn],
            clean_env(FEEDLINE_DATABASE_STARTUP_TIMEOUT_SECONDS="1"),
        )
        assert code in (2, 3), (case, outputs.texts[f"serve ({case}) stderr"])
    bad_brokers = {
        "broker URL without a port": f"rabbitmq-stream://canary:{bad}@127.0.0.1:port/%2F",
        "broker URL of another scheme": f"amqp://canary:{bad}@127.0.0.1/%2F",
    }
    for case, url in bad_brokers.items():
        code = run(
            outputs,
            f"serve ({case})",
            [FEEDLINE, "serve", SERVICE, "--port", str(free_port()), "--database-url", service_dsn],
            clean_env(FEEDLINE_BROKER_URL=url),
        )
        assert code == 2, (case, outputs.texts[f"serve ({case}) stderr"])
    relays = {
        "broker not there": closed_port_url(canaries.broker_password),
        "broker refuses the password": f"rabbitmq-stream://guest:{canaries.wrong_broker_password}"
        f"@127.0.0.1:{rabbitmq.stream_port}/%2F",
    }
    for case, url in relays.items():
        with (
            serving(
                outputs, f"serve ({case})", service_dsn, tmp_path / case, FEEDLINE_BROKER_URL=url
            ) as base,
            httpx.Client(base_url=base, timeout=30) as http,
        ):
            assert http.post("/offers", json={"description": "unrelayed"}).status_code == 201

            # The relay retries: wait for it to have failed (and logged) twice.
            def relay_failed(folder: Path = tmp_path / case) -> bool:
                log = (folder / "stdout").read_text() + (folder / "stderr").read_text()
                return log.count("relay") >= 2

            wait_for(relay_failed, timeout=60, what=f"the relay's failures ({case})")
            record_response(outputs, f"GET /metrics ({case})", http.get("/metrics"))
            record_response(outputs, f"GET /health/ready ({case})", http.get("/health/ready"))
    outputs.assert_no_leak()


# --- feedline subscribe ------------------------------------------------------------------


def subscribe(
    outputs: Outputs,
    where: str,
    environment: dict[str, str],
    tmp_path: Path,
    timeout: float = 90,
) -> int:
    """One `feedline subscribe` run; its summary, log and termination message recorded."""
    termination = tmp_path / f"{where.replace(' ', '-')}.termination-log"
    environment = {**environment, "FEEDLINE_TERMINATION_LOG": str(termination)}
    code = run(outputs, f"subscribe ({where})", [FEEDLINE, "subscribe"], environment, timeout)
    outputs.add_file(f"subscribe ({where}) termination message", termination)
    return code


def test_a_subscriber_leaks_no_secret(
    canaries: Canaries,
    outputs: Outputs,
    service_dsn: str,
    read_model_dsn: str,
    broker_url: str,
    rabbitmq: RabbitMQNode,
    tmp_path: Path,
) -> None:
    """Runs over HTTP and the broker, a follower's /summary and /healthz, and failing runs:
    a refused token, a refused read-model login, a DSN the settings refuse, a broker that is
    not there or refuses the password."""
    token_file = tmp_path / "token"
    token_file.write_text(canaries.feed_token)
    wrong_token_file = tmp_path / "wrong-token"
    wrong_token_file.write_text(canaries.wrong_feed_token)
    settings = {
        "FEEDLINE_FEED_AUTH": "Token",
        "FEEDLINE_FEED_TOKEN_FILE": str(token_file),
        "FEEDLINE_FEED_RETRY_ATTEMPTS": "1",
        "FEEDLINE_DATABASE_RETRIES": "1",
    }
    service_settings = {
        "FEEDLINE_FEED_AUTH": "Token",
        "FEEDLINE_FEED_TOKEN": canaries.feed_token,
        "FEEDLINE_BROKER_URL": broker_url,
    }
    with (
        serving(outputs, "serve", service_dsn, tmp_path / "serve", **service_settings) as base,
        httpx.Client(base_url=base, timeout=30) as http,
    ):
        for number in range(3):
            assert http.post("/offers", json={"description": f"o{number}"}).status_code == 201
        wait_for(
            lambda: metric(base, "feedline_broker_relay_confirmed_sequence") >= 3,
            timeout=60,
            what="the relay to publish",
        )
        feed = f"{base}/events"

        def env(name: str, database_url: str = read_model_dsn, **extra: str) -> dict[str, str]:
            return clean_env(
                **subscriber_env(name, feed, database_url, LOYALTY, **(settings | extra))
            )

        stream = {"FEEDLINE_BROKER_URL": broker_url, BROKER_STREAM: stream_name(SERVICE)}
        assert subscribe(outputs, "http", env("over-http"), tmp_path) == 0
        assert subscribe(outputs, "broker", env("over-broker", **stream), tmp_path) == 0
        refused_token = env("refused", FEEDLINE_FEED_TOKEN_FILE=str(wrong_token_file))
        failing = {
            "refused token": refused_token,
            "refused login": env(
                "login", wrong_password(read_model_dsn, canaries.wrong_db_password)
            ),
            "no database": env("bad-dsn", no_database(read_model_dsn, canaries.bad_dsn_password)),
            "broker not there": env(
                "no-broker",
                FEEDLINE_BROKER_URL=closed_port_url(canaries.broker_password),
                **{BROKER_STREAM: stream_name(SERVICE)},
            ),
            "broker refuses the password": env(
                "broker-refuses",
                FEEDLINE_BROKER_URL=broker_url.replace(
                    canaries.broker_password, canaries.wrong_broker_password
                ),
                **{BROKER_STREAM: stream_name(SERVICE)},
            ),
            "bad broker URL": env(
                "bad-broker-url",
                FEEDLINE_BROKER_URL=f"rabbitmq-stream://u:{canaries.bad_dsn_password}@h:port/",
                **{BROKER_STREAM: stream_name(SERVICE)},
            ),
        }
        # A broker that is not there, or refuses the login, is a degraded run: the
        # subscriber reads the HTTP feed instead (docs/transports.md). The others fail.
        degraded = {"broker not there", "broker refuses the password"}
        for where, environment in failing.items():
            code = subscribe(outputs, where, environment, tmp_path)
            assert where in degraded or code != 0, (
                where,
                outputs.texts[f"subscribe ({where}) stdout"],
            )
        # Follow mode: its status endpoint, healthy and then failed (its token refused).
        for where, environment in {
            "follower": env("follower"),
            "follower refused": refused_token | {"FEEDLINE_SUBSCRIPTION": "follower-refused"},
        }.items():
            follow(outputs, where, environment, tmp_path)
    outputs.assert_no_leak()


def follow(outputs: Outputs, where: str, environment: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    termination = tmp_path / f"{where.replace(' ', '-')}.termination-log"
    environment = {
        **environment,
        "FEEDLINE_FOLLOW": "true",
        "FEEDLINE_STATUS_PORT": str(port),
        "FEEDLINE_FEED_WAIT_SECONDS": "1",
        "FEEDLINE_TERMINATION_LOG": str(termination),
    }
    process = subprocess.Popen(
        [FEEDLINE, "subscribe"], env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    status = f"http://127.0.0.1:{port}"

    def summary() -> httpx.Response | None:
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(f"{status}/summary", timeout=2)
            if response.status_code == 200 and response.json().get("outcome"):
                return response
        if process.poll() is not None:
            return httpx.Response(599, text="(exited before its status answered)")
        return None

    try:
        record_response(outputs, f"{where} /summary", wait_for(summary, what=f"{where} /summary"))
        with contextlib.suppress(httpx.HTTPError):
            record_response(outputs, f"{where} /healthz", httpx.get(f"{status}/healthz", timeout=2))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
    outputs.add(f"{where} stdout", stdout)
    outputs.add(f"{where} stderr", stderr)
    outputs.add_file(f"{where} termination message", termination)


# --- feedline dev ------------------------------------------------------------------------


def dev_folder(tmp_path: Path, name: str, dsn: str) -> Path:
    """The local example, its read model's DSN (in its Secret) replaced by ``dsn``."""
    folder = tmp_path / name
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns(".feedline-dev"))
    secret = folder / "secrets.yaml"
    original = "sqlite:///$(FEEDLINE_DEV_STATE_DIR)/loyalty-program.db"
    assert original in secret.read_text()
    secret.write_text(secret.read_text().replace(original, dsn))
    return folder


def dev_outputs(outputs: Outputs, where: str, folder: Path, output: Path) -> None:
    outputs.add_file(f"{where} output", output)
    state = folder / ".feedline-dev"
    texts = [
        path
        for path in state.rglob("*")
        if path.is_file() and not path.name.endswith((".db", ".db-wal", ".db-shm", ".lock"))
    ]
    outputs.add_files(where, texts)


DASHBOARD_PAGES = (
    "/",
    "/api/status",
    "/api/metrics",
    "/api/logs",
    "/logs",
    "/api/traces",
    "/traces",
)


def dashboard_payloads(outputs: Outputs, where: str, status_file: Path) -> None:
    """Every page and JSON answer of the running dev's dashboard (its URL in status.json)."""
    dashboard = json.loads(status_file.read_text())["dashboard"]
    with httpx.Client(base_url=dashboard, timeout=10) as http:
        for page in DASHBOARD_PAGES:
            answer = http.get(page)
            assert answer.status_code == 200, f"{page}: {answer.status_code} {answer.text[:300]}"
            record_response(outputs, f"{where}: dashboard GET {page}", answer)


def test_feedline_dev_leaks_no_secret(
    canaries: Canaries, outputs: Outputs, read_model_dsn: str, tmp_path: Path
) -> None:
    """status.json, its output, every log under its state directory and the dashboard's
    pages and JSON (status, metrics, logs, traces), with the read model's DSN password in
    the Secret: a run that succeeds, one whose login is refused, and a DSN it refuses at
    load."""
    from tests.integration.test_dev_local_mode import free_port_offset

    cases = {
        "dev": (read_model_dsn, True),
        "dev (refused login)": (wrong_password(read_model_dsn, canaries.wrong_db_password), True),
        "dev (no database)": (no_database(read_model_dsn, canaries.bad_dsn_password), False),
    }
    for where, (dsn, starts) in cases.items():
        folder = dev_folder(tmp_path, where.replace(" ", "-").strip("()"), dsn)
        output = tmp_path / f"{folder.name}.out"
        with open(output, "wb") as out:
            process = subprocess.Popen(
                [
                    FEEDLINE,
                    "dev",
                    str(folder),
                    "--port-offset",
                    str(free_port_offset()),
                    "--run-now",
                    # A free port: another `feedline dev` may hold the default one.
                    "--dashboard-port",
                    "0",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=clean_env(COLUMNS="250"),
            )
        status_file = folder / ".feedline-dev" / "status.json"
        try:
            if starts:

                def ran(
                    status_file: Path = status_file,
                    process: subprocess.Popen[bytes] = process,
                    output: Path = output,
                ) -> bool:
                    with contextlib.suppress(OSError, ValueError):
                        (subscription,) = json.loads(status_file.read_text())["subscriptions"]
                        return int(subscription.get("runs") or 0) >= 1
                    assert process.poll() is None, output.read_text()
                    return False

                wait_for(ran, timeout=90, what=f"{where}: a run")
                dashboard_payloads(outputs, where, status_file)
            else:
                assert process.wait(timeout=60) != 0, output.read_text()
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        dev_outputs(outputs, where, folder, output)
    assert any("status.json" in where for where in outputs.texts), outputs.texts.keys()
    outputs.assert_no_leak()
