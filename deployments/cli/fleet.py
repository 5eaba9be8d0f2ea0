"""`shipyard fleet ...`: per-target release deployments, each in its own work queue with a
concurrency limit of 1, and the pool's limit sized to the GPU quota.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Adds the command(s) to the CLI (filled in by the work on issue 25)."""
