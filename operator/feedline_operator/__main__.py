"""`python -m feedline_operator` is `feedline operator` (for images without the CLI)."""

import typer

from feedline_operator.command import operator

if __name__ == "__main__":
    typer.run(operator)
