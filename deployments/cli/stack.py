"""`shipyard stack up|down|status`: the local distributed stack (PostgreSQL from Debian's
package, a Prefect server on it, workers), under $SHIPYARD_HOME, stopped by PID.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Adds the command(s) to the CLI (filled in by the work on issue 25)."""
