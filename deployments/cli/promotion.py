"""`shipyard promote-release TARGET`: release in TARGET the exact image digest that passed in
the stage before it (ReleaseTarget.promotes_from); no rebuild. Owned by the promotion work.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Adds the command(s) to the CLI (filled in by the work on issue 25)."""
