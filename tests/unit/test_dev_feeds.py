"""`feedline dev` knows which feed URLs the services it runs serve."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedline.dev.feeds import left_out_service, serving_service, unserved_feed_line
from feedline.dev.plan import Layout

pytestmark = pytest.mark.unit

LAYOUT = Layout(Path("/work/sample"), Path("/work/sample/.feedline-dev"), port_offset=100)
ALL = ("special-offers", "loyalty-program", "shopping-cart", "product-catalog")


@pytest.mark.parametrize(
    ("url", "running", "served_by"),
    [
        ("http://127.0.0.1:8101/events", ALL, "special-offers"),
        ("http://localhost:8102/events", ALL, "loyalty-program"),
        ("http://127.0.0.1:8101/events", ("loyalty-program",), None),
        ("http://127.0.0.1:8001/events", ALL, None),  # the default port, not shifted
        ("http://orders.example.com/events", ALL, None),
        ("https://127.0.0.1/events", ALL, None),
    ],
)
def test_serving_service(url: str, running: tuple[str, ...], served_by: str | None) -> None:
    assert serving_service(url, LAYOUT, running) == served_by


def test_a_service_listening_on_every_address_serves_loopback_urls() -> None:
    layout = Layout(Path("/w"), Path("/w/.feedline-dev"), host="0.0.0.0")  # noqa: S104
    assert serving_service("http://127.0.0.1:8004/events", layout, ALL) == "product-catalog"


def test_the_line_names_the_subscription_the_url_and_the_fix() -> None:
    url = "http://127.0.0.1:8101/events"
    assert left_out_service(url, LAYOUT, ("loyalty-program",)) == "special-offers"
    line = unserved_feed_line("offers", "sub.yaml", url, LAYOUT, ("loyalty-program",))
    assert line == (
        f"subscription offers: feed {url}: no service feedline dev runs serves it "
        "(it runs loyalty-program) and nothing answers there; its runs will fail until "
        "something does: special-offers is left out by --service: add --service special-offers"
    )
    other = unserved_feed_line("orders", "o.yaml", "http://orders/events", LAYOUT, ALL)
    assert other.endswith("start what serves it, or fix spec.feed.url in o.yaml")
