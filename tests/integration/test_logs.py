"""Services log one schema (feedline_contracts.logs), uvicorn's lines included, at levels that fit.

Real `feedline serve` processes: every line of stdout is a JSON object with
timestamp, level, logger and event (or, with --log-format plain, the same
fields for people); a 404 is logged as a warning and an upstream failure
answered 502 as an error, not as info. The subscriber writes the same schema
on stderr (stdout keeps only its summary), in either format.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.ports import free_port
from tests.support.processes import stop
from tests.support.services import FEEDLINE, wait_until_ready
from tests.support.subscriber_process import run_subscriber, subscriber_env

pytestmark = pytest.mark.integration

SCHEMA = {"timestamp", "level", "logger", "event"}


@contextlib.contextmanager
def serving(service: str, tmp_path: Path, *args: str, **env: str) -> Iterator[tuple[str, Path]]:
    """``feedline serve SERVICE``; its base URL and the file its stdout goes to."""
    port = free_port()
    log = tmp_path / f"{service}.log"
    environment = {**os.environ, "FEEDLINE_HTTP_CACHE_DIR": str(tmp_path), **env}
    environment.pop("FEEDLINE_LOG_FORMAT", None)
    argv = [FEEDLINE, "serve", service, "--port", str(port)]
    argv += ["--database-url", f"sqlite:///{tmp_path}/{service}.db", *args]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=environment)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process, log)
        yield f"http://127.0.0.1:{port}", log
    finally:
        stop(process, grace_seconds=10)


def records(log: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in log.read_text().splitlines() if line.strip()]


def requests_logged(log: Path, path: str) -> list[dict[str, object]]:
    return [r for r in records(log) if r["event"] == "request" and r.get("path") == path]


def test_every_line_is_one_schema_and_a_404_is_a_warning(tmp_path: Path) -> None:
    with serving("special-offers", tmp_path) as (base_url, log):
        assert httpx.get(f"{base_url}/offers/99", timeout=10).status_code == 404
        assert httpx.get(f"{base_url}/health/live", timeout=10).status_code == 200
    lines = records(log)  # every line parses: uvicorn's start and stop lines too
    assert all(line.keys() >= SCHEMA for line in lines), lines
    assert any(line["logger"] == "uvicorn.error" for line in lines)
    [missing] = requests_logged(log, "/offers/99")
    assert (missing["level"], missing["status"]) == ("warning", 404)
    assert missing["logger"] == "feedline.access"
    assert {"request_id", "trace_id"} <= missing.keys()
    [healthy] = requests_logged(log, "/health/live")
    assert healthy["level"] == "info"


def test_an_upstream_failure_answered_502_is_logged_as_an_error(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # no product-catalog listens there
    with serving("shopping-cart", tmp_path, FEEDLINE_PRODUCT_CATALOG_URL=closed) as (url, log):
        answer = httpx.post(f"{url}/shoppingcart/1/items", json=[1], timeout=60)
        assert answer.status_code == 502
    [failed] = requests_logged(log, "/shoppingcart/1/items")
    assert (failed["level"], failed["status"]) == ("error", 502)


def test_plain_format_writes_the_same_fields_for_people(tmp_path: Path) -> None:
    with serving("special-offers", tmp_path, "--log-format", "plain") as (base_url, log):
        assert httpx.get(f"{base_url}/offers/99", timeout=10).status_code == 404
    lines = log.read_text().splitlines()
    assert lines
    assert not any(line.startswith("{") for line in lines)
    [request] = [line for line in lines if "/offers/99" in line]
    assert "[warning" in request
    assert "[feedline.access]" in request
    assert "status=404" in request


@pytest.mark.parametrize("log_format", ["json", "plain"])
def test_the_subscriber_logs_the_same_schema_on_stderr_and_only_its_summary_on_stdout(
    tmp_path: Path, log_format: str
) -> None:
    with serving("special-offers", tmp_path) as (base_url, _):
        offer = {"description": "10% off"}
        assert httpx.post(f"{base_url}/offers", json=offer, timeout=10).status_code == 201
        environment = subscriber_env(
            "logs-check", f"{base_url}/events", f"sqlite:///{tmp_path}/read-model.db"
        )
        finished = run_subscriber(environment, "--log-format", log_format)
    assert finished.returncode == 0, finished.stderr
    assert finished.summary["position"] == 1
    assert len(finished.stdout.strip().splitlines()) == 1  # the summary, nothing else
    lines = [line for line in finished.stderr.splitlines() if line.strip()]
    if log_format == "json":
        parsed = [orjson.loads(line) for line in lines]  # every line parses
        assert all(line.keys() >= SCHEMA for line in parsed), parsed
        [done] = [line for line in parsed if line["event"] == "run finished"]
        assert done["level"] == "info"
        assert done["logger"] == "feedline.subscriber"
        assert not any(str(line["logger"]).startswith("httpx") for line in parsed)
    else:
        assert not any(line.startswith("{") for line in lines), lines
        [done] = [line for line in lines if "run finished" in line]
        assert "[info" in done
        assert "[feedline.subscriber]" in done


def test_the_subscriber_refuses_an_unknown_log_format_naming_the_flag(tmp_path: Path) -> None:
    environment = subscriber_env(
        "logs-check", "http://127.0.0.1:9/events", f"sqlite:///{tmp_path}/read-model.db"
    )
    finished = run_subscriber(environment, "--log-format", "xml")
    assert finished.returncode == 2
    assert "--log-format" in finished.stderr
    assert "json" in finished.stderr
    assert "plain" in finished.stderr
