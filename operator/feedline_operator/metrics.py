"""Prometheus metrics of the operator (served on --metrics-port)."""

from prometheus_client import CollectorRegistry, Counter, Histogram

# The operator's own registry: nothing else in the process leaks into /metrics.
REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "feedline_operator_reconciles_total",
    "Reconciles of EventSubscriptions, by trigger and result.",
    ["trigger", "result"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "feedline_operator_errors_total",
    "Errors while reconciling or writing status, by reason.",
    ["reason"],
    registry=REGISTRY,
)
DURATION = Histogram(
    "feedline_operator_reconcile_duration_seconds",
    "Time per reconcile of one EventSubscription.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
CHILD_CHANGES = Counter(
    "feedline_operator_child_changes_total",
    "Children created, updated (drift or spec change) or deleted.",
    ["action"],
    registry=REGISTRY,
)
STATUS_WRITES = Counter(
    "feedline_operator_status_writes_total",
    "EventSubscription status writes, by cause.",
    ["cause"],
    registry=REGISTRY,
)
