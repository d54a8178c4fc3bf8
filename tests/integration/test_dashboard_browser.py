"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

One user's path through `feedline dev`'s dashboard, with the page's own live
updates (server-sent events swapped in by htmx) and buttons: an offer posted
to special-offers shows on the page as the subscription's head and lag (no
run yet); the run-now button runs it and the page shows the new position and
no lag; the request's trace (by the ``traceparent`` it sent) shows its spans
and the subscriber's batch span that links to it; the logs page, filtered to
the subscriber, shows its line for that run. The overview is saved as
docs/images/dashboard.png (the screenshot in docs/local-mode.md).

Playwright's own browser download is not used (``playwright install`` cannot
reach its server here): the browser is Debian's, at ``CHROMIUM``. Without it
the test fails, saying which package to install.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from tests.integration.test_dashboard import post_offer, start_with_dashboard
from tests.integration.test_dev_local_mode import SUBSCRIPTION, Dev, dev_starter

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/lib/chromium/chromium")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "dashboard.png"
LIVE_TIMEOUT_MS = 15_000  # the head is read every 2 s; a run takes a few seconds


@pytest.fixture
def start_dev(tmp_path: Path) -> Iterator[Callable[..., Dev]]:
    with dev_starter(tmp_path) as start:
        yield start


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's browser with "
            "`apt-get install -y --no-install-recommends chromium` (not `playwright install`)"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield launched
        finally:
            launched.close()


def test_post_watch_lag_run_now_then_find_the_trace_and_the_subscriber_log(
    start_dev: Callable[..., Dev], tmp_path: Path, browser: Browser
) -> None:
    dev, dashboard = start_with_dashboard(start_dev, tmp_path)
    page = browser.new_page(viewport={"width": 1500, "height": 900})
    page.set_default_timeout(LIVE_TIMEOUT_MS)
    page.goto(dashboard)
    row = page.locator(f"#sub-{SUBSCRIPTION}")
    expect(row.locator("td.position")).to_have_text("0")
    expect(row.locator("td.lag")).to_have_text("0")
    expect(page.locator("#svc-special-offers td.state")).to_contain_text("up")

    # An offer: the page shows the new head and the lag, live, with no run yet.
    trace_id = secrets.token_hex(16)
    post_offer(dev, "10% off books", trace_id=trace_id)
    expect(row.locator("td.head")).to_have_text("1")
    expect(row.locator("td.lag")).to_have_text("1")
    expect(row.locator("td.position")).to_have_text("0")
    expect(row.locator("td.runs")).to_have_text("1")

    # Run now: the button asks dev (the path of `feedline dev run-now`); the run catches up.
    row.get_by_role("button", name="Run now").click()
    expect(page.locator("#run-now-answer")).to_contain_text(f"{SUBSCRIPTION}: run started")
    expect(row.locator("td.position")).to_have_text("1")
    expect(row.locator("td.lag")).to_have_text("0")
    expect(row.locator("td.runs")).to_have_text("2")
    expect(row.locator("td.outcome")).to_have_text("CaughtUp")
    expect(page.locator("#rate-chart canvas").first).to_be_visible()
    page.wait_for_timeout(2500)  # a point or two more on the request-rate chart
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # The request's trace, by the trace id of the traceparent it sent: listed, then opened.
    page.get_by_role("link", name="Traces").click()
    listed = page.locator(f'#trace-list tr[data-trace-id="{trace_id}"]')
    expect(listed).to_contain_text("POST /offers")
    listed.get_by_role("link").first.click()
    expect(page).to_have_url(re.compile(f"/traces/{trace_id}$"))
    request_span = page.locator('#waterfall tr.span[data-service="special-offers"]').first
    expect(request_span).to_contain_text("POST /offers")
    # The subscriber's batch that applied the offer is another trace (the run's), linked.
    linked = page.locator(f'#linked-spans tr.linked-span[data-service="{SUBSCRIPTION}"]')
    expect(linked.first).to_contain_text("subscriber.batch")

    # The subscriber's log line for that run: the logs page, filtered to its process.
    page.get_by_role("link", name="Logs").click()
    page.get_by_label(SUBSCRIPTION).check()
    expect(page).to_have_url(re.compile(f"process={SUBSCRIPTION}"))
    finished = page.locator(f'#log-lines tr[data-process="{SUBSCRIPTION}"]').filter(
        has_text="run finished"
    )
    expect(finished.last).to_contain_text("position=1")
    expect(page.locator('#log-lines tr[data-process="special-offers"]')).to_have_count(0)
    # And the request's own line, by its trace id typed into the filter.
    page.locator("#log-id").fill(trace_id)
    page.get_by_label(SUBSCRIPTION).uncheck()
    access = page.locator(f'#log-lines tr[data-trace-id="{trace_id}"]')
    expect(access.first).to_contain_text("/offers")
    page.close()
