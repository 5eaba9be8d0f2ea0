"""The `shipyard` command line: one typer app, each area registers its own commands."""

from __future__ import annotations

import importlib

import typer

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
    "deployments.cli_sandbox",
    "deployments.cli_mirror",
    "deployments.cli_build",
    "deployments.cli_triggers",
    "deployments.cli_release",
    "deployments.cli_report",
]

for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
