"""Writing a Prefect Variable that another run may write at the same moment.

`Variable.set(..., overwrite=True)` reads, then creates when the name is new: two runs that both
find it missing both create, and the later one fails with `ObjectAlreadyExists` (a re-run and the
killed run's still-running build finish together). The loser's write is an update: set again.
"""

from __future__ import annotations

from typing import Any

from prefect.exceptions import ObjectAlreadyExists
from prefect.variables import Variable


def set_variable(name: str, value: Any) -> None:
    """Create or overwrite the Variable `name`, also when another writer creates it meanwhile."""
    try:
        Variable.set(name, value, overwrite=True)
    except ObjectAlreadyExists:
        Variable.set(name, value, overwrite=True)
