"""The `shipyard` command line: one typer app, each area registers its own commands."""

from __future__ import annotations

import atexit
import importlib
import sys
import threading

import typer
from rich.markup import escape

from shipyard.deployments.cli.errors import (
    NEEDS_PREFECT_API,
    err_console,
    one_line,
    quiet_console,
    require_prefect_api,
    unreachable_line,
    verbose_requested,
)

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
    "shipyard.deployments.cli.promotion",
    "shipyard.deployments.cli.fleet",
    "shipyard.deployments.cli.stack",
    "shipyard.deployments.cli.report",
]

for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


@app.callback()
def _options(
    ctx: typer.Context,
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="On an error, print the whole traceback."
    ),
) -> None:
    """Options for every command."""
    # A command that needs the Prefect API refuses at once without one (errors.py says why);
    # its --help does not need it (click runs this callback before it parses the command's
    # options, so the command line is read here).
    command = ctx.invoked_subcommand
    if command in NEEDS_PREFECT_API and "--help" not in sys.argv[1:]:
        require_prefect_api(command)


def _quiet_at_exit() -> None:
    """The command has said its last line: what Prefect's services log while they drain at exit
    ("EventsWorker - Still processing items") must not follow it on stderr. They drain from
    `threading._register_atexit` (prefect/_internal/concurrency/services.py: before `atexit`'s
    hooks), whose hooks run last registered first: registered now, this one runs before theirs."""
    register = getattr(threading, "_register_atexit", atexit.register)
    register(quiet_console)


def main() -> None:
    """The `shipyard` entry point: an error is one line, its traceback only with --verbose."""
    if verbose_requested():
        app()
        return
    try:
        app(standalone_mode=True)
    except SystemExit:
        _quiet_at_exit()
        raise
    except Exception as exc:  # noqa: BLE001 - whatever escaped a command: one line
        line = unreachable_line(exc) or f"{one_line(exc)} (`shipyard --verbose ...` for details)"
        err_console.print(f"[red]error:[/] {escape(line)}", soft_wrap=True)
        _quiet_at_exit()
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
