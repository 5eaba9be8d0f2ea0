"""The `shipyard` command line: one typer app, each area registers its own commands."""

from __future__ import annotations

import importlib
import sys

import typer

from shipyard.deployments.cli.errors import err_console, one_line, verbose_requested

app = typer.Typer(
    name="shipyard",
    help=(
        "Shipyard: build and release GPU inference services on Google Cloud Run, "
        "orchestrated by Prefect. With no Google account, everything runs against the "
        "local sandbox (`shipyard sandbox up`)."
    ),
    no_args_is_help=True,
    add_completion=False,
)

# Each module exposes register(app). Order decides the order in --help.
_COMMAND_MODULES = [
    "shipyard.deployments.cli.sandbox",
    "shipyard.deployments.cli.setup",
    "shipyard.deployments.cli.init",
    "shipyard.deployments.cli.mirror",
    "shipyard.deployments.cli.build",
    "shipyard.deployments.cli.triggers",
    "shipyard.deployments.cli.release",
    "shipyard.deployments.cli.status",
    "shipyard.deployments.cli.rollback",
    "shipyard.deployments.cli.rollout",
    "shipyard.deployments.cli.sweep",
    "shipyard.deployments.cli.report",
]

for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


@app.callback()
def _options(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="On an error, print the whole traceback."
    ),
) -> None:
    """Options for every command."""


def main() -> None:
    """The `shipyard` entry point: an error is one line, its traceback only with --verbose."""
    if verbose_requested():
        app()
        return
    try:
        app(standalone_mode=True)
    except Exception as exc:  # noqa: BLE001 - whatever escaped a command: one line
        err_console.print(
            f"[red]error:[/] {one_line(exc)} (`shipyard --verbose ...` for details)", soft_wrap=True
        )
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
