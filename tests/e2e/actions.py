"""What the e2e tests do to the demo, as a user would: kubectl and the services' HTTP APIs."""

from __future__ import annotations

from typing import Any

from tests.e2e.clients import retry_http
from tests.e2e.conftest import Demo

# run-now's Job must come from the annotation's own update, not from the
# operator's resync (60 s in the chart).
RUN_NOW_PROMPT_SECONDS = 5


def evsub_status(demo: Demo, name: str) -> dict[str, Any]:
    status: dict[str, Any] = demo.cluster.kubectl_json(
        "-n", demo.namespace, "get", "evsub", name
    ).get("status", {})
    return status


def wait_ready(demo: Demo) -> None:
    demo.kubectl("wait", "--for=condition=Ready", "evsub", "--all", "--timeout=180s", timeout=200)


def register_user(demo: Demo, name: str) -> dict[str, Any]:
    """A loyalty-program user without interests: every offer is for them."""
    status, user = retry_http(
        "POST", f"{demo.url('loyalty-program')}/users", {"name": name, "interests": []}
    )
    assert status == 201, user
    return dict(user)


def post_offer(demo: Demo, description: str) -> int:
    status, body = retry_http(
        "POST", f"{demo.url('special-offers')}/offers", {"description": description}
    )
    assert status == 201, body
    return int(body["id"])


def request_run_now(demo: Demo, request: str, subscription: str = "loyalty-special-offers") -> None:
    """Ask for a run now, as a user does: annotate the subscription."""
    demo.kubectl(
        "annotate", "evsub", subscription, "--overwrite", f"feedline.dev/run-now={request}"
    )
