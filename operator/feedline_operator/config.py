"""How one operator instance runs (from the command line or a test)."""

from __future__ import annotations

from dataclasses import dataclass, field

from feedline_operator.builders import ChildDefaults


@dataclass(frozen=True)
class OperatorConfig:
    # None: in-cluster credentials, else the default kubeconfig.
    kubeconfig: str | None = None
    # Empty and not all_namespaces: the namespace of the kubeconfig context.
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    defaults: ChildDefaults = field(default_factory=ChildDefaults)
    # 0 disables the endpoint (tests run several operators in one process).
    health_port: int = 8080
    metrics_port: int = 9090
    # Every subscription is reconciled at least this often (a safety net; child
    # events correct drift within seconds).
    resync_seconds: float = 60.0
    # Follow mode: how often the follower's summary (feedline_contracts.follower) is read.
    follow_poll_seconds: float = 10.0
    # Threads for the (synchronous) handlers.
    workers: int = 8
