"""`python -m feedline_subscriber`: the same command as `feedline subscribe`."""

import typer

from feedline_subscriber.command import subscribe


def main() -> None:
    app = typer.Typer(add_completion=False, rich_markup_mode="markdown")  # as `feedline`
    app.command("subscribe")(subscribe)

    @app.callback()
    def _root() -> None:
        """The Feedline subscriber."""

    app()


if __name__ == "__main__":
    main()
