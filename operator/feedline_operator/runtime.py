"""Run one operator: from `feedline operator`, or in a thread from a test."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import kopf

from feedline_operator.config import OperatorConfig
from feedline_operator.handlers import build_registry

Flag = asyncio.Event | threading.Event | asyncio.Future[Any] | None


async def run_operator(
    config: OperatorConfig, stop_flag: Flag = None, ready_flag: Flag = None
) -> None:
    # standalone: one replica (the chart's Deployment uses Recreate), so no
    # peering objects and no permissions for them.
    await kopf.operator(
        registry=build_registry(config),
        clusterwide=config.all_namespaces,
        namespaces=list(config.namespaces),
        standalone=True,
        liveness_endpoint=(
            f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None
        ),
        memo=kopf.Memo(),
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
