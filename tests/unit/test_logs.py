"""One log schema for every part (feedline_contracts.logs): the same keys from any writer."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest
import structlog

from feedline_contracts.logs import LogFormat, configure_logging
from feedline_operator.command import kopf_object_fields

pytestmark = pytest.mark.unit

SCHEMA = {"timestamp", "level", "logger", "event"}


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_structlog_and_library_records_share_the_keys() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, extra_processors=(kopf_object_fields,))
    structlog.get_logger("feedline.feed").info("page served", start=3)
    logging.getLogger("uvicorn.error").warning("Started server process [7]")
    reference = {"kind": "EventSubscription", "namespace": "shop", "name": "loyalty"}
    # As kopf's object loggers write them (not on kopf.objects itself: kopf's own handler
    # there would post the record as a Kubernetes Event).
    logging.getLogger("feedline.test.kopf_like").error(
        "Handler failed", extra={"k8s_ref": reference, "k8s_skip": False, "settings": object()}
    )
    first, second, third = lines(stream)
    assert first.keys() >= SCHEMA
    assert second.keys() >= SCHEMA
    assert third.keys() >= SCHEMA
    assert (first["level"], first["logger"], first["event"], first["start"]) == (
        "info",
        "feedline.feed",
        "page served",
        3,
    )
    assert (second["level"], second["logger"]) == ("warning", "uvicorn.error")
    # kopf's object records: the object, not kopf's internals ("severity" nowhere).
    assert third["level"] == "error"
    assert third["object"] == reference
    assert not {"k8s_ref", "k8s_skip", "settings", "severity"} & third.keys()


def test_plain_lines_carry_the_same_fields_for_people() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, log_format=LogFormat.PLAIN)
    structlog.get_logger("feedline.subscriber").warning("feed slow", seconds=2.5)
    [line] = stream.getvalue().splitlines()
    assert "[warning" in line
    assert "feed slow" in line
    assert "[feedline.subscriber]" in line
    assert "seconds=2.5" in line
    assert not line.startswith("{")


def test_the_level_filters_both_writers_and_quiet_loggers_stay_at_warning() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, level="WARNING", quiet=("httpx",))
    structlog.get_logger("feedline").info("not written")
    logging.getLogger("x").info("not written either")
    logging.getLogger("httpx").info("chatter")
    logging.getLogger("x").error("written")
    assert [line["event"] for line in lines(stream)] == ["written"]


def test_an_unknown_level_is_refused_naming_the_levels() -> None:
    with pytest.raises(ValueError, match="use DEBUG, INFO, WARNING, ERROR or CRITICAL"):
        configure_logging(level="LOUD")
