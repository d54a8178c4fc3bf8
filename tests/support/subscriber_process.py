"""Running `feedline subscribe` as a real process, the way a CronJob's pod runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

FEEDLINE = str(Path(sys.executable).with_name("feedline"))
LOYALTY = "feedline.services.loyalty_program.projection:project_special_offers"
AUDITED = "tests.support.subscriber_projections:audited_special_offers"
REPO = Path(__file__).resolve().parents[2]


def subscriber_env(
    subscription: str, feed_url: str, database_url: str, projection: str = AUDITED, **extra: str
) -> dict[str, str]:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("FEEDLINE_")
    }
    environment.update(
        {
            "FEEDLINE_SUBSCRIPTION": subscription,
            "FEEDLINE_FEED_URL": feed_url,
            "FEEDLINE_DATABASE_URL": database_url,
            "FEEDLINE_PROJECTION": projection,
            "PYTHONPATH": str(REPO),  # so tests.support projections import
        }
    )
    environment.update(extra)
    return environment


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert lines, f"no summary on stdout; stderr:\n{self.stderr[-3000:]}"
        result: dict[str, Any] = orjson.loads(lines[-1])
        return result


def start_subscriber(environment: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [FEEDLINE, "subscribe", *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(process: subprocess.Popen[bytes], timeout: float = 120) -> Finished:
    stdout, stderr = process.communicate(timeout=timeout)
    return Finished(process.returncode, stdout.decode(), stderr.decode())


def run_subscriber(environment: dict[str, str], *args: str, timeout: float = 120) -> Finished:
    return finish(start_subscriber(environment, *args), timeout)
