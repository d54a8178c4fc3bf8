"""Stopping the processes tests start: politely first, then for sure."""

from __future__ import annotations

import subprocess


def stop(proc: subprocess.Popen[bytes], grace_seconds: float = 10) -> None:
    """SIGTERM, wait up to ``grace_seconds``, then SIGKILL."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
