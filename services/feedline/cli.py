"""`feedline`: the one command line of every image and of local use."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from feedline.dev.ports import PORT_OFFSET_MAX, PORT_OFFSET_MIN
from feedline_operator.command import operator
from feedline_subscriber.command import subscribe

if TYPE_CHECKING:
    from typer._click.core import Context as ClickContext  # typer's own copy of click

app = typer.Typer(
    name="feedline",
    help="Event feeds between microservices: serve services, run subscribers, run the operator.",
    no_args_is_help=True,
    add_completion=False,
    # markdown: help paragraphs are re-wrapped to the terminal ("rich" keeps every
    # line break of the docstring, so a paragraph came out ragged at 80 columns).
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        typer.echo(f"feedline {version('feedline')}")
        raise typer.Exit()


@app.callback()
def root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the installed version and exit.",
        ),
    ] = False,
) -> None:
    """Event feeds between microservices: serve services, run subscribers, run the operator."""


class ServiceName(StrEnum):
    SPECIAL_OFFERS = "special-offers"
    LOYALTY_PROGRAM = "loyalty-program"
    SHOPPING_CART = "shopping-cart"
    PRODUCT_CATALOG = "product-catalog"


class ConsoleLevel(StrEnum):
    """`feedline dev --console-logs`: feedline.dev.console_logs.CONSOLE_LEVELS (a unit test
    compares them; spelled out so the CLI does not import the dashboard to start)."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"
    critical = "critical"
    none = "none"


# `feedline serve` exits with it when its database cannot be used (as uvicorn
# does when a service's start-up fails).
DATABASE_UNUSABLE = 3

# The settings `feedline serve` also takes as flags; the others are variables only.
SERVE_FLAGS = {
    "database_url": "--database-url",
    "grpc_port": "--grpc-port",
    "log_format": "--log-format",
}


def settings_error(exc: ValidationError) -> typer.BadParameter:
    """Name the setting (FEEDLINE_* variable, and its flag if it has one) and what it accepts."""
    messages = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        where = f"FEEDLINE_{field.upper()}"
        if field in SERVE_FLAGS:
            where = f"{SERVE_FLAGS[field]} ({where})"
        messages.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return typer.BadParameter("; ".join(messages))


@app.command()
def serve(
    service: Annotated[
        str,
        typer.Argument(
            help=(
                "an example service (special-offers, loyalty-program, shopping-cart, "
                "product-catalog) or the import path of a ServiceDefinition, "
                "package.module:attribute (e.g. gift_cards.service:definition)"
            ),
        ),
    ],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="port to listen on (default: an example's own, 8001-8004; 8080 for others)",
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="FEEDLINE_DATABASE_URL",
            help="postgresql://USER@HOST:PORT/DB or sqlite:///PATH: the service's own database",
            show_default="sqlite:///SERVICE.db, one file per service in the working folder",
        ),
    ] = None,
    grpc_port: Annotated[
        int | None,
        typer.Option(
            envvar="FEEDLINE_GRPC_PORT",
            min=0,
            max=65535,
            help="also serve the gRPC event feed on this port, same address (0: a free port)",
            show_default="no gRPC",
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            envvar="FEEDLINE_LOG_FORMAT",
            help="json (one object per line) or plain (key=value for people); the same fields",
            show_default="json",
        ),
    ] = None,
) -> None:
    """Run one service: its commands and queries, its event feed, health and metrics.

    The database is the service's own: a database whose event store another
    service owns is refused. Exit codes: 0 stopped (SIGTERM, Ctrl-C); 1 could
    not listen on the address; 2 bad flags or settings; 3 the database cannot
    be used (unreachable, login refused, a missing folder, or another service's
    event store), said in one line on stderr naming it and what to do.
    """
    import asyncio
    import sys

    import uvicorn

    from feedline.chassis.app import ServiceDatabaseError, check_database, create_app
    from feedline.chassis.logs import configure_logging
    from feedline.chassis.settings import ServiceSettings
    from feedline.services.registry import default_port, load_definition

    overrides: dict[str, object] = {"database_url": database_url} if database_url else {}
    if grpc_port is not None:
        overrides["grpc_port"] = grpc_port
    if log_format is not None:
        overrides["log_format"] = log_format
    overrides["grpc_host"] = host  # the gRPC feed listens where HTTP does
    try:
        settings = ServiceSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise settings_error(exc) from exc
    configure_logging(settings.log_level, settings.log_format)
    if ":" in service and "" not in sys.path:
        # As uvicorn does for module:app: a service's package in the working folder
        # (a `feedline new-service` folder) is found without installing it.
        sys.path.insert(0, "")
    try:
        definition = load_definition(service)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="SERVICE") from exc
    try:
        # check_database below prepares the database (waiting for it if need be), once:
        # the app's start-up then does not do it again.
        application = create_app(definition, settings, database_prepared=True)
    except ValueError as exc:  # settings that cannot work together, e.g. Token without a token
        raise typer.BadParameter(str(exc)) from exc
    try:
        asyncio.run(check_database(definition, settings))
    except ServiceDatabaseError as exc:
        typer.echo(f"feedline serve: {exc}", err=True)
        raise typer.Exit(DATABASE_UNUSABLE) from None
    http_port = port or default_port(definition.name)
    try:
        uvicorn.run(
            application,
            host=host,
            port=http_port,
            log_config=None,
            access_log=False,  # the chassis logs each request as JSON with its ids
            timeout_graceful_shutdown=5,
        )
    except SystemExit as failed:
        # uvicorn ends a failed start with 3 (our "database unusable"): the HTTP
        # port taken (uvicorn logged the OS error) or the gRPC one. Both are
        # "could not listen": 1, as --help says.
        if failed.code in (0, None):
            raise
        listen_error = getattr(application.state, "listen_error", None) or (
            f"cannot listen on {host}:{http_port}: the port is in use or the address is "
            "not this machine's; choose another with --port"
        )
        typer.echo(f"feedline serve: {listen_error}", err=True)
        raise typer.Exit(1) from None


@app.command("new-service")
def new_service(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="the service's name, e.g. gift-cards")
    ],
    directory: Annotated[
        str, typer.Option(help="where to create the NAME folder", show_default="the working folder")
    ] = ".",
) -> None:
    """Scaffold a service on the chassis: a command, a query, an event, its tests and manifests.

    Writes DIRECTORY/NAME: the package (service.py, projection.py), its tests
    (python -m pytest), values for the feedline-service chart and an
    EventSubscription sample. Nothing that exists is overwritten.
    """
    from pathlib import Path

    from feedline.scaffold import ScaffoldError, create_service

    try:
        written = create_service(name, Path(directory))
    except ScaffoldError as exc:
        raise typer.BadParameter(str(exc)) from exc
    target = Path(directory) / name
    for path in written:
        typer.echo(f"  {target / path}")
    package = name.replace("-", "_")
    typer.echo(
        f"Created {name} in {target}. Next: cd {target} && python -m pytest, then "
        f"feedline serve {package}.service:definition"
    )


app.command("subscribe")(subscribe)
app.command("operator")(operator)


class DevGroup(TyperGroup):
    """`feedline dev [DIR]` runs a folder; `feedline dev run-now NAME` asks the running one.

    Whatever does not start with a subcommand's name (a folder, an option,
    nothing, ``--help``) goes to the default command, ``up``: ``feedline dev
    examples/local`` is ``feedline dev up examples/local``.
    """

    default_command = "up"

    def parse_args(self, ctx: ClickContext, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


dev_app = typer.Typer(
    cls=DevGroup,
    help="Run the example services and every EventSubscription of DIR locally (no Kubernetes).",
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
app.add_typer(dev_app, name="dev")


@dev_app.command("up")
def dev(
    directory: Annotated[
        str,
        typer.Argument(metavar="DIR", help="folder of EventSubscription (and Secret) manifests"),
    ] = ".",
    state_dir: Annotated[
        str | None,
        typer.Option(
            help="SQLite databases, logs, termination logs, status.json",
            show_default="DIR/.feedline-dev",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="address the services listen on")] = "127.0.0.1",
    port_offset: Annotated[
        int,
        typer.Option(
            min=PORT_OFFSET_MIN,
            max=PORT_OFFSET_MAX,
            help="added to every service's default port (8001-8004)",
        ),
    ] = 0,
    service: Annotated[
        list[ServiceName] | None,
        typer.Option(help="run only this example service (repeatable; default: all four)"),
    ] = None,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="run every subscription once (Follow ones as one catch-up run), print, exit",
        ),
    ] = False,
    run_now: Annotated[
        bool,
        typer.Option(
            "--run-now",
            help="run every CronJob subscription at start-up too "
            "(later: feedline dev run-now NAME [DIR], or kill -USR1 PID for all)",
        ),
    ] = False,
    output: Annotated[
        str,
        typer.Option(help="--once prints: table | json"),
    ] = "table",
    crd: Annotated[
        str | None,
        typer.Option(
            help="the EventSubscription CRD to validate against",
            show_default="the CRD shipped in the feedline package",
        ),
    ] = None,
    broker: Annotated[
        bool,
        typer.Option(
            "--broker",
            help="start a local RabbitMQ node (the services relay their events to it) even "
            "when no subscription reads through one",
            show_default="only when a subscription has feed.broker",
        ),
    ] = False,
    dashboard_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="the dashboard's port (its URL is printed at start and in status.json); "
            "0: a free port",
            show_default="8000 + --port-offset",
        ),
    ] = None,
    console_logs: Annotated[
        ConsoleLevel,
        typer.Option(
            help="print the processes' log lines at this level and above on this terminal "
            "(none: no lines; the dashboard shows them all)",
        ),
    ] = ConsoleLevel.warning,
    dashboard: Annotated[
        bool,
        typer.Option(
            "--dashboard/--no-dashboard",
            help="serve the dashboard (services, subscriptions, logs, traces, metrics; "
            "never with --once)",
        ),
    ] = True,
) -> None:
    """Run the example services and every EventSubscription of DIR locally (no Kubernetes).

    SQLite databases; each service serves its feed over HTTP and gRPC (a free port:
    grpc://NAME URLs map to it); a subscription with feed.broker gets a local RabbitMQ
    node that the services relay to. Each subscriber runs the pod spec the operator
    would render, on its schedule (CronJob) or all the time (Follow). Shows position and lag,
    and serves a dashboard (--dashboard-port; logs, traces, request rates, run-now).
    A service or follower that crashes is reported and restarted. Ctrl-C or
    SIGTERM stops everything. `feedline dev run-now NAME [DIR]` (another
    terminal) runs a CronJob subscription now. Exit codes: 0 stopped; 1 a
    service did not start, a --once run failed, or a crashed process was not
    back up at the end; 2 bad flags, bad manifests, or no EventSubscription in
    DIR. See docs/local-mode.md.
    """
    from pathlib import Path

    from rich.console import Console

    from feedline.dev.main import DevOptions, load, run
    from feedline.dev.manifests import FolderError, ManifestError

    if output not in ("table", "json"):
        raise typer.BadParameter(
            f"{output!r}: accepted values are table, json", param_hint="--output"
        )
    if not Path(directory).is_dir():
        raise typer.BadParameter(f"{directory!r} is not a folder", param_hint="DIR")
    if crd is not None and not Path(crd).is_file():
        raise typer.BadParameter(f"{crd!r} is not a file", param_hint="--crd")
    options = DevOptions(
        directory=Path(directory),
        state_dir=Path(state_dir) if state_dir else None,
        host=host,
        port_offset=port_offset,
        services=tuple(s.value for s in service or ()),
        once=once,
        run_now=run_now,
        output=output,
        crd=Path(crd) if crd else None,
        broker=broker,
        dashboard=dashboard,
        dashboard_port=dashboard_port,
        console_logs=console_logs.value,
    )
    try:
        folder, layout = load(options, Console(stderr=True))
    except ManifestError as exc:
        for line in exc.lines():
            typer.echo(f"feedline dev: {line}", err=True)
        if isinstance(exc, FolderError) and len(exc.lines()) > 1:
            typer.echo(f"feedline dev: {len(exc.lines())} problems; nothing started", err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(run(options, folder, layout))


@dev_app.command("run-now")
def dev_run_now(
    name: Annotated[str, typer.Argument(metavar="NAME", help="the EventSubscription to run now")],
    directory: Annotated[
        str,
        typer.Argument(metavar="DIR", help="the folder the running feedline dev was given"),
    ] = ".",
    state_dir: Annotated[
        str | None,
        typer.Option(
            help="the --state-dir the running feedline dev was given",
            show_default="DIR/.feedline-dev",
        ),
    ] = None,
) -> None:
    """Ask the running `feedline dev DIR` to run a CronJob subscription now.

    It finds that feedline dev through STATE/control.json (its pid, a loopback
    URL and a token) and prints its answer: the run started, or starts when the
    running one ends. Exit codes: 0 asked; 1 no feedline dev runs DIR, or it
    refused (no such subscription, Follow mode, suspended).
    """
    from pathlib import Path

    from feedline.dev.control import ControlError, ask_run_now
    from feedline.dev.plan import default_state_dir

    state = Path(state_dir) if state_dir else default_state_dir(Path(directory))
    try:
        answer = ask_run_now(state, name)
    except ControlError as exc:
        typer.echo(f"feedline dev run-now: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(answer)


def main() -> None:
    app()
