"""The CLI's answer to a user's mistake: one line naming what is wrong and the fix.

A traceback helps whoever debugs Shipyard, not whoever typed a wrong tag: it is printed only
with `shipyard --verbose ...`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, NoReturn, cast

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from shipyard.blocks.release_target import ReleaseTarget

err_console = Console(stderr=True)

SANDBOX_FIX = "run `shipyard sandbox up` and the `export` lines it prints"


class UsageError(Exception):
    """A mistake of the user's, already phrased as `what: fix`."""


def verbose_requested(argv: list[str] | None = None) -> bool:
    args = sys.argv[1:] if argv is None else argv
    return "--verbose" in args or "-v" in args


def fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def one_line(exc: BaseException) -> str:
    """The last meaningful line of an exception (pydantic's first error, a Prefect message)."""
    text = str(exc).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and "validation error" in lines[0]:
        return f"{lines[1]}: {lines[2]}" if len(lines) > 2 else lines[1]
    return lines[0] if len(lines) == 1 else " ".join(lines[:2])


def preflight_release(tag: str, target: str) -> ReleaseTarget:
    """Check what `shipyard release` needs before a flow run starts; return the target block.

    Raises UsageError naming the field, the value and the fix.
    """
    from shipyard.blocks.release_tag import configured_tag_pattern, validate_release_tag
    from shipyard.blocks.release_target import ReleaseTarget

    try:
        validate_release_tag(tag, field="TAG", pattern=configured_tag_pattern())
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        block = cast(ReleaseTarget, ReleaseTarget.load(target))
    except ValueError as exc:
        if "Unable to find block document" in str(exc):
            raise UsageError(
                f"--target {target!r}: no Shipyard Release Target block of that name; create it "
                "(Prefect UI: Blocks > + > Shipyard Release Target, after `prefect block register "
                "-m shipyard.blocks.release_target`) or pass --target NAME of one that exists"
            ) from None
        raise UsageError(f"--target {target!r} does not load: {one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - no server, bad URL: say which
        raise UsageError(
            f"cannot read block {target!r} from the Prefect API ({one_line(exc)}): start "
            "`prefect server start` or set PREFECT_API_URL"
        ) from None
    try:
        block.resolved_project()
    except ValueError as exc:
        raise UsageError(f"{one_line(exc)}; for the local sandbox, {SANDBOX_FIX}") from None
    return block
