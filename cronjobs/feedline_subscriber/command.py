"""`feedline subscribe`: one subscriber run (or a follower), configured by flags or environment.

Every flag has an environment variable (feedline_contracts.subscriber_env); the
operator renders those. Bad values exit 2 with a message naming the flag, its
variable and what is accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
from pathlib import Path
from typing import Annotated

import structlog
import typer

from feedline_contracts import subscriber_env as env
from feedline_contracts.logs import LOG_FORMAT_SETTING, LogFormat, configure_logging
from feedline_subscriber.projection import load_projection
from feedline_subscriber.runner import run_subscription
from feedline_subscriber.settings import SettingsError, SubscriberSettings, load_settings
from feedline_subscriber.status_server import StatusServer
from feedline_subscriber.summary import Outcome, Summary, utc_now, write_summary


def settle_heap(settings: SubscriberSettings) -> None:
    """Import what the run will use, then exclude the start-up heap from garbage collection.

    The ~90,000 objects that importing the subscriber, SQLAlchemy, asyncpg,
    httpx and the projection creates live as long as the process; without
    ``gc.freeze`` every full collection walks them again, and the allocations
    of a catch-up (tens of thousands of objects per page) trigger many: measured
    at ~0.2 s of CPU per 200,000 events. Frozen objects are still freed by
    reference counting; only the cycle collector skips them. ``subscribe``
    unfreezes after the run (it may be called in-process, e.g. by tests).
    """
    with contextlib.suppress(Exception):  # a bad import path is reported by the run itself
        load_projection(settings.projection)
    with contextlib.suppress(Exception):
        import sqlalchemy.dialects.postgresql.asyncpg  # noqa: F401 - else imported by the engine
    gc.collect()
    gc.freeze()


async def _serve_and_run(settings: SubscriberSettings) -> Summary:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    latest = Summary(
        subscription=settings.subscription,
        position=None,
        head=None,
        processed=0,
        deadLettered=0,
        outcome=Outcome.PROGRESSED,
        message="starting",
        startTime=utc_now(),
        completionTime=None,
    )

    def remember(summary: Summary) -> None:
        nonlocal latest
        latest = summary

    server: StatusServer | None = None
    if settings.follow and settings.status_port is not None:
        server = StatusServer(lambda: latest, port=settings.status_port)
        port = await server.start()
        structlog.get_logger("feedline.subscriber").info("status server", port=port)
    try:
        summary = await run_subscription(settings, stop=stop, on_progress=remember)
        remember(summary)
        return summary
    finally:
        if server is not None:
            await server.stop()


def _fail_usage(message: str) -> typer.Exit:
    typer.echo(f"feedline subscribe: {message}", err=True)
    return typer.Exit(2)


def subscribe(
    subscription: Annotated[
        str | None,
        typer.Option(
            envvar=env.SUBSCRIPTION,
            help="Subscription name (keys checkpoint, lock, dead letters).",
            show_default=False,
        ),
    ] = None,
    feed_url: Annotated[
        str | None,
        typer.Option(
            envvar=env.FEED_URL,
            help=(
                "The feed; its scheme picks the transport: an HTTP endpoint "
                "(http://special-offers/events) or a gRPC feed (grpc://special-offers:9090). "
                "With --broker-url: the service's HTTP feed (the head, and what the stream "
                "no longer holds)."
            ),
            show_default=False,
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar=env.DATABASE_URL,
            help="Read-model database: postgresql://... or sqlite:///PATH.",
            show_default=False,
        ),
    ] = None,
    projection: Annotated[
        str | None,
        typer.Option(
            envvar=env.PROJECTION,
            help="Projection import path package.module:function.",
            show_default=False,
        ),
    ] = None,
    event_types: Annotated[
        str | None,
        typer.Option(
            envvar=env.EVENT_TYPES,
            help="Comma-separated event names to read (default: all).",
            show_default=False,
        ),
    ] = None,
    feed_auth: Annotated[
        str | None,
        typer.Option(
            envvar=env.FEED_AUTH,
            help="None | Token | ServiceAccountToken, in any letter case (default None).",
            show_default=False,
        ),
    ] = None,
    feed_token_file: Annotated[
        Path | None,
        typer.Option(
            envvar=env.FEED_TOKEN_FILE,
            help="File holding the bearer token (Token, ServiceAccountToken).",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            envvar=env.BATCH_SIZE,
            help="Events per page and transaction, 1..10000 (default 1000).",
            show_default=False,
        ),
    ] = None,
    max_events_per_run: Annotated[
        int | None,
        typer.Option(
            envvar=env.MAX_EVENTS_PER_RUN,
            help="Stop after this many events; 0 = no limit (default).",
            show_default=False,
        ),
    ] = None,
    start_position: Annotated[
        str | None,
        typer.Option(
            envvar=env.START_POSITION,
            help="A new subscription starts at Beginning (default), Head or a sequence number.",
            show_default=False,
        ),
    ] = None,
    on_poison_event: Annotated[
        str | None,
        typer.Option(
            envvar=env.ON_POISON_EVENT, help="DeadLetter | Halt (default Halt).", show_default=False
        ),
    ] = None,
    retry_max_attempts: Annotated[
        int | None,
        typer.Option(
            envvar=env.RETRY_MAX_ATTEMPTS,
            help="Attempts at a failing event, 1..100 (default 3).",
            show_default=False,
        ),
    ] = None,
    retry_backoff_seconds: Annotated[
        float | None,
        typer.Option(
            envvar=env.RETRY_BACKOFF_SECONDS,
            help="First backoff between attempts, doubling (default 1).",
            show_default=False,
        ),
    ] = None,
    replay_token: Annotated[
        str | None,
        typer.Option(
            envvar=env.REPLAY_TOKEN,
            help="Change it to rebuild the read model (default empty).",
            show_default=False,
        ),
    ] = None,
    replay_from_sequence: Annotated[
        int | None,
        typer.Option(
            envvar=env.REPLAY_FROM_SEQUENCE,
            help="First sequence number read again on replay (default 1).",
            show_default=False,
        ),
    ] = None,
    follow: Annotated[
        bool | None,
        typer.Option(
            "--follow/--no-follow",
            envvar=env.FOLLOW,
            help="Keep long-polling instead of stopping when caught up.",
            show_default=False,
        ),
    ] = None,
    status_port: Annotated[
        int | None,
        typer.Option(
            envvar=env.STATUS_PORT,
            help="Follow mode: serve /summary and /healthz on this port.",
            show_default=False,
        ),
    ] = None,
    termination_log: Annotated[
        Path | None,
        typer.Option(
            envvar=env.TERMINATION_LOG,
            help="Also write the summary here (default /dev/termination-log when it exists).",
            show_default=False,
        ),
    ] = None,
    feed_wait_seconds: Annotated[
        float | None,
        typer.Option(
            envvar=env.FEED_WAIT_SECONDS,
            help="Follow mode: long-poll seconds, 0..30 (default 20).",
            show_default=False,
        ),
    ] = None,
    feed_retry_attempts: Annotated[
        int | None,
        typer.Option(
            envvar=env.FEED_RETRY_ATTEMPTS,
            help="Retries of a transient feed error, 0..100 (default 8).",
            show_default=False,
        ),
    ] = None,
    database_retries: Annotated[
        int | None,
        typer.Option(
            envvar=env.DATABASE_RETRIES,
            help="Retries of a read-model database not reachable yet, 0..100 (default 8).",
            show_default=False,
        ),
    ] = None,
    broker_url: Annotated[
        str | None,
        typer.Option(
            envvar=env.BROKER_URL,
            help=(
                "Read the service's RabbitMQ stream: "
                "rabbitmq-stream[+tls]://USER:PASSWORD@HOST[:PORT]/VHOST (with --broker-stream)."
            ),
            show_default=False,
        ),
    ] = None,
    broker_stream: Annotated[
        str | None,
        typer.Option(
            envvar=env.BROKER_STREAM,
            help="The service's stream, feedline.events.SERVICE (with --broker-url).",
            show_default=False,
        ),
    ] = None,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            envvar=LOG_FORMAT_SETTING,
            case_sensitive=False,
            # Short, as the other flags' are: a wide metavar squeezes the flags' names.
            metavar="<format>",
            help="Logs on stderr: json (one object per line) or plain (key=value for people).",
        ),
    ] = LogFormat.JSON,
) -> None:
    """Read an event feed into a read model: one run, or --follow.

    Prints a one-line JSON summary on stdout (and to the termination-message
    file). Exit codes: 0 caught up, progressed or locked by another run;
    1 failed: the feed or the read-model database still unreachable after its
    retries (the message names it, password hidden, and what to do), a login
    refused, a protocol error or a projection that cannot be imported;
    2 bad flags or configuration; 3 halted at a poison event.
    """
    try:
        settings = load_settings(
            subscription=subscription,
            feed_url=feed_url,
            database_url=database_url,
            projection=projection,
            event_types=event_types,
            feed_auth=feed_auth,
            feed_token_file=feed_token_file,
            batch_size=batch_size,
            max_events_per_run=max_events_per_run,
            start_position=start_position,
            on_poison_event=on_poison_event,
            retry_max_attempts=retry_max_attempts,
            retry_backoff_seconds=retry_backoff_seconds,
            replay_token=replay_token,
            replay_from_sequence=replay_from_sequence,
            follow=follow,
            status_port=status_port,
            termination_log=termination_log,
            feed_wait_seconds=feed_wait_seconds,
            feed_retry_attempts=feed_retry_attempts,
            database_retries=database_retries,
            broker_url=broker_url,
            broker_stream=broker_stream,
        )
    except (SettingsError, ValueError) as exc:
        raise _fail_usage(str(exc)) from None
    # stderr: stdout carries only the summary line. httpx's line per page is noise.
    configure_logging(log_format=log_format, stream=sys.stderr, quiet=("httpx",))
    settle_heap(settings)
    try:
        summary = asyncio.run(_serve_and_run(settings))
    finally:
        gc.unfreeze()
    path, explicit = settings.termination_log_path()
    write_summary(summary, path, explicit=explicit)
    raise typer.Exit(summary.exit_code)
