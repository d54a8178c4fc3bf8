"""`feedline`: the one command line of every image and of local use."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from pydantic import ValidationError

from feedline_operator.command import operator
from feedline_subscriber.command import subscribe

app = typer.Typer(
    name="feedline",
    help="Event feeds between microservices: serve services, run subscribers, run the operator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class ServiceName(StrEnum):
    SPECIAL_OFFERS = "special-offers"
    LOYALTY_PROGRAM = "loyalty-program"
    SHOPPING_CART = "shopping-cart"
    PRODUCT_CATALOG = "product-catalog"


def settings_error(exc: ValidationError) -> typer.BadParameter:
    """Name the setting (flag or FEEDLINE_* variable) and what it accepts."""
    messages = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        messages.append(f"FEEDLINE_{field.upper()} / --{field.replace('_', '-')}: {error['msg']}")
    return typer.BadParameter("; ".join(messages))


@app.command()
def serve(
    service: Annotated[ServiceName, typer.Argument(help="which example service to run")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="port to listen on (default: the service's own)"),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="FEEDLINE_DATABASE_URL",
            help="postgresql://USER@HOST:PORT/DB or sqlite:///PATH",
            show_default="sqlite:///feedline.db",
        ),
    ] = None,
) -> None:
    """Run one service: its commands and queries, its event feed, health and metrics."""
    import uvicorn

    from feedline.chassis.app import create_app
    from feedline.chassis.logs import configure_logging
    from feedline.chassis.settings import ServiceSettings
    from feedline.services.registry import DEFAULT_PORTS, SERVICES

    overrides = {"database_url": database_url} if database_url else {}
    try:
        settings = ServiceSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise settings_error(exc) from exc
    configure_logging(settings.log_level)
    application = create_app(SERVICES[service.value], settings)
    uvicorn.run(
        application,
        host=host,
        port=port or DEFAULT_PORTS[service.value],
        log_config=None,
        access_log=False,  # the chassis logs each request as JSON with its ids
        timeout_graceful_shutdown=5,
    )


app.command("subscribe")(subscribe)
app.command("operator")(operator)


@app.command()
def dev() -> None:
    """Run the services and subscriptions of a folder locally (not built yet)."""
    typer.echo("feedline dev is not built yet (see the local-mode issue)", err=True)
    raise typer.Exit(2)


def main() -> None:
    app()
