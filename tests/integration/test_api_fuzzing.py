"""Schemathesis against each service's OpenAPI document: no input makes a 5xx."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import StartService

pytestmark = pytest.mark.integration

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "service", ["special-offers", "loyalty-program", "shopping-cart", "product-catalog"]
)
def test_no_generated_request_makes_a_server_error(
    start_service: StartService, tmp_path: Path, service: str
) -> None:
    settings = {}
    if service == "shopping-cart":
        settings["product_catalog_url"] = start_service(
            "product-catalog", f"sqlite:///{tmp_path / 'catalog.db'}"
        )
    base = start_service(service, f"sqlite:///{tmp_path / 'service.db'}", **settings)
    result = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{base}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--seed",
            "2026",
            "--request-timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=REPO,
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks",
            "PYTHONPATH": str(REPO),
        },
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout
