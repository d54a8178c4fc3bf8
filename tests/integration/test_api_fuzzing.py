"""Schemathesis, with every check it has, against each service's OpenAPI document.

Every operation of every example service is fuzzed on SQLite and on
PostgreSQL, with all of Schemathesis 4's checks (``--checks all``): no 5xx,
status codes, content types, response headers and bodies as declared,
invalid data rejected and valid data accepted, unsupported methods answered
405 with ``Allow``, ``use_after_free`` and ``ensure_resource_availability``
(the stateful phase follows the inferred links: a deleted offer is gone, a
created one is there), ``ignored_auth`` (the feed runs with
``FEEDLINE_FEED_AUTH=Token``: its bearer scheme is declared and a request
without it, or with a wrong one, must be refused), and a response time of at
most ``MAX_RESPONSE_SECONDS``.

The long poll: ``GET /events?wait=W`` may answer up to W seconds late (0..30),
as the ``wait`` parameter's description says. A fuzzer that sent large waits
would spend its budget waiting and trip the response-time check, so the hooks
(tests/support/schemathesis_hooks.py) cap valid waits at 0.2 s; invalid ones
are sent as generated. The hooks also bring positive cases within the two
rules a schema cannot state (``end`` > ``start``; product ids the catalog
holds), so positive data acceptance checks what the API promises.

The normal test run fuzzes a few examples per operation (``FUZZ_EXAMPLES``,
default 5, seed 2026); ``make fuzz`` runs a few hundred per operation (figures
in docs/architecture.md, "Fuzzing").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import StartService

pytestmark = pytest.mark.integration

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
REPO = Path(__file__).resolve().parents[2]
SERVICES = ["special-offers", "loyalty-program", "shopping-cart", "product-catalog"]
FEED_TOKEN = "fuzz-token"
MAX_RESPONSE_SECONDS = 5
EXAMPLES = int(os.environ.get("FEEDLINE_FUZZ_EXAMPLES", "5"))
SEED = os.environ.get("FEEDLINE_FUZZ_SEED", "2026")
REPORT = os.environ.get("FEEDLINE_FUZZ_REPORT")


def fuzz(base: str, *, name: str, token: str | None) -> str:
    """Run schemathesis with every check against the service at ``base``; its report."""
    argv = [
        SCHEMATHESIS,
        "run",
        f"{base}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        SEED,
        "--workers",
        "1",
        "--request-timeout",
        "15",
        "--max-response-time",
        str(MAX_RESPONSE_SECONDS),
    ]
    if token is not None:
        argv += ["--header", f"Authorization: Bearer {token}"]
    started = time.monotonic()
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
        cwd=REPO,
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks",
            "PYTHONPATH": str(REPO),
        },
    )
    report = result.stdout[-8000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert "No issues found" in result.stdout, report
    generated = re.search(r"(\d+) generated", result.stdout)
    operations = re.search(r"Tested: (\d+)", result.stdout)
    line = (
        f"{name}: {operations.group(1) if operations else '?'} operations, "
        f"{generated.group(1) if generated else '?'} cases generated "
        f"({EXAMPLES} examples per operation and phase), {time.monotonic() - started:.0f} s, "
        "no issues found\n"
    )
    if REPORT:  # `make fuzz` prints these lines at the end (figures: docs/architecture.md)
        with open(REPORT, "a") as report_file:
            report_file.write(line)
    return result.stdout


def start(
    start_service: StartService, tmp_path: Path, service: str, database_url: str, **settings: str
) -> str:
    if service == "shopping-cart":
        settings["product_catalog_url"] = start_service(
            "product-catalog", f"sqlite:///{tmp_path / 'catalog.db'}"
        )
    return start_service(service, database_url, **settings)


@pytest.mark.parametrize("service", SERVICES)
def test_every_check_passes_on_every_operation(
    start_service: StartService, tmp_path: Path, service: str, database_url: str
) -> None:
    """All checks, the feed behind a bearer token (so ``ignored_auth`` has work)."""
    base = start(
        start_service, tmp_path, service, database_url, feed_auth="Token", feed_token=FEED_TOKEN
    )
    fuzz(base, name=f"{service} on {database_url.partition(':')[0]}", token=FEED_TOKEN)


def test_every_check_passes_on_an_open_feed(
    start_service: StartService, tmp_path: Path, sqlite_url: str
) -> None:
    """The default mode (FEEDLINE_FEED_AUTH=None): the feed declares no security and takes all."""
    base = start(start_service, tmp_path, "special-offers", sqlite_url)
    fuzz(base, name="special-offers on sqlite, open feed", token=None)
