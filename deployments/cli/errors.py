"""The CLI's answer to a user's mistake: one line naming what is wrong and the fix.

A traceback helps whoever debugs Shipyard, not whoever typed a wrong tag: it is printed only
with `shipyard --verbose ...`.

What else could reach stderr while a command runs a flow in this process is kept off it
(`flow_output`): Prefect's console handler writes every run's log lines to stderr, tracebacks
included (a tag not in git: 70 lines, two tracebacks; the sandbox down: 376 lines, twelve
tracebacks), and the Cloud Logging handler prints its unsent-lines count there when it closes.
Those lines stay in the run's log on the Prefect server (the API handler is untouched); the
command's own terminal gets them as progress, one line per record, on stdout, and stderr gets the
command's single error line.

Commands that need the Prefect API refuse to start without one (`require_prefect_api`): with
PREFECT_API_URL unset, Prefect's client starts a temporary server on the Prefect home's database,
the database a real server on that home uses, and writes runs, artifacts and events into it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn, TextIO, cast

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from shipyard.blocks.release_target import ReleaseTarget

err_console = Console(stderr=True)

SANDBOX_FIX = "run `shipyard sandbox up` and the `export` lines it prints"
PREFECT_FIX = (
    "start `prefect server start` and `export PREFECT_API_URL=http://127.0.0.1:4200/api` "
    "(the server's address)"
)
# Commands that talk to the Prefect API (blocks, runs, artifacts, variables, events).
NEEDS_PREFECT_API = frozenset(
    {
        "release",
        "rollback",
        "status",
        "promote",
        "abort",
        "sweep",
        "report",
        "promote-release",
        "fleet",
        "prewarm",
        "build",
        "mirror",
        "serve",
        "setup",
    }
)
HEALTH_TIMEOUT_S = 5.0  # one health request to the Prefect API, or to the sandbox's emulator


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


# ---------------------------------------------------------------- the Prefect API


def require_prefect_api(command: str) -> str:
    """The configured Prefect API's URL, answering; else one line naming the fix (exit 2)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        fail(
            f"`shipyard {command}` needs a Prefect server and PREFECT_API_URL is not set "
            "(Prefect would start a temporary one on this Prefect home's database, a real "
            f"server's, and write into it): {PREFECT_FIX}"
        )
    try:
        with get_client(sync_client=True, httpx_settings={"timeout": HEALTH_TIMEOUT_S}) as client:
            problem = client.api_healthcheck()
    except Exception as exc:  # noqa: BLE001 - a bad URL, a refused connection: the same fix
        problem = exc
    if problem is not None:
        fail(f"the Prefect API at {url} does not answer ({one_line(problem)}): {PREFECT_FIX}")
    return str(url)


# ---------------------------------------------------------------- release preflight


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
    check_endpoint(block)
    return block


def check_endpoint(block: ReleaseTarget) -> None:
    """A target on an endpoint (the sandbox's emulator) finds it answering, or UsageError:
    a release started against a stopped sandbox would retry every call, then fail."""
    import httpx

    endpoint = block.google().resolved_endpoint()
    if not endpoint:
        return  # Google itself: its errors are phrased when they come (release_failure)
    base = endpoint if "://" in endpoint else f"http://{endpoint}"
    try:
        httpx.get(base, timeout=HEALTH_TIMEOUT_S)
    except httpx.TransportError as exc:
        raise UsageError(
            f"the Google endpoint {base} of the target's cloud block does not answer "
            f"({_reason(exc)}): the sandbox is down; {SANDBOX_FIX} (`shipyard setup` again if "
            "it now runs at another address)"
        ) from None


# ---------------------------------------------------------------- a failed run, in one line


_URL = re.compile(r"(?:host='([^']+)', port=(\d+))|(?:https?://([^/\s:'\"]+)(?::(\d+))?)")


def _chain(exc: BaseException) -> list[BaseException]:
    """The error and those it was raised from (google-api-core's RetryError keeps `cause`)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 20 and all(current is not s for s in seen):
        seen.append(current)
        cause = current.__cause__ or getattr(current, "cause", None)
        if cause is None and not current.__suppress_context__:
            cause = current.__context__
        current = cause if isinstance(cause, BaseException) else None
    return seen


def _unreachable(exc: BaseException) -> BaseException | None:
    """The transport error in the chain (nothing answered), if any."""
    import httpx
    import requests

    kinds: tuple[type[BaseException], ...] = (
        requests.ConnectionError,
        requests.Timeout,
        httpx.TransportError,
        ConnectionError,
        TimeoutError,
    )
    return next((e for e in _chain(exc) if isinstance(e, kinds)), None)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for words in ("Connection refused", "Name or service not known", "timed out", "No route"):
        if words.lower() in text.lower():
            return words.lower()
    return type(exc).__name__


def _host_port(text: str) -> tuple[str, str] | None:
    match = _URL.search(text)
    if not match:
        return None
    host = match.group(1) or match.group(3)
    port = match.group(2) or match.group(4) or ""
    return host, port


def _same_place(url: str | None, place: tuple[str, str]) -> bool:
    found = _host_port(url or "")
    return found is not None and found[0] == place[0] and (not place[1] or found[1] == place[1])


def unreachable_line(exc: BaseException, endpoint: str | None = None) -> str | None:
    """When nothing answered (a transport error in the chain): which place did not (the
    sandbox's Google `endpoint`, the Prefect API, the registry, Google) and the fix; else None."""
    import os

    from prefect.settings import get_current_settings

    down = _unreachable(exc)
    if down is None:
        return None
    place = _host_port(str(down)) or _host_port(str(exc))
    where = f"{place[0]}:{place[1]}" if place and place[1] else (place[0] if place else "")
    reason = _reason(down)
    if place and _same_place(endpoint or os.environ.get("SHIPYARD_GOOGLE_ENDPOINT"), place):
        return (
            f"the sandbox's Google endpoint {where} does not answer ({reason}); {SANDBOX_FIX}, "
            "then run the command again"
        )
    if place and _same_place(str(get_current_settings().api.url or ""), place):
        return f"the Prefect API at {where} stopped answering ({reason}): {PREFECT_FIX}"
    if place and _same_place(os.environ.get("SHIPYARD_REGISTRY_URL"), place):
        return (
            f"the registry at {where} does not answer ({reason}); {SANDBOX_FIX}, then run the "
            "command again"
        )
    return (
        f"{where or 'Google Cloud'} could not be reached ({reason}); check the network (proxy, "
        "DNS, firewall), then run the command again"
    )


def release_failure(exc: BaseException, block: ReleaseTarget | None, tag: str) -> str:
    """A failed release (what escaped the flow run) as one line that names the fix."""
    endpoint = block.google().resolved_endpoint() if block is not None else None
    down = unreachable_line(exc, endpoint)
    if down is not None:
        return f"release {tag} failed: {down.replace('the command again', 'the release again')}"
    return f"release {tag} failed: {one_line(exc)}"


# ---------------------------------------------------------------- a flow run's console output


class _OneLine(logging.Handler):
    """Each record as one line (its message's first line, no traceback) on `stream`."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__(logging.INFO)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:
            return
        try:
            message = record.getMessage().strip().splitlines()
            who = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
            head = f"{record.levelname.lower():<7} " + (f"{who}: " if who else "")
            self.stream.write(f"{head}{message[0] if message else ''}\n")
            self.stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream must not fail the release
            self.handleError(record)


def _stderr_handlers() -> list[tuple[logging.Logger, logging.Handler]]:
    """Every (logger, handler) that writes to this process's stderr."""
    streams = {id(sys.stderr), id(sys.__stderr__)}
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    found = []
    for logger in loggers:
        for handler in logger.handlers:
            to_stderr = id(getattr(handler, "stream", None)) in streams
            if to_stderr and not isinstance(handler, logging.FileHandler):
                found.append((logger, handler))
    return found


def quiet_console() -> None:
    """From now on, no log record reaches this process's stderr: for the end of a command,
    when Prefect's services drain at exit and log about it ("EventsWorker - Still processing
    items" on a loaded machine) after the command's last line. The records still reach the
    Prefect API's handlers."""
    silent = logging.NullHandler()  # else logging's last resort prints to stderr itself
    for logger, handler in _stderr_handlers():
        logger.removeHandler(handler)
        if silent not in logger.handlers:
            logger.addHandler(silent)
    logging.getLogger().addHandler(silent)


@contextlib.contextmanager
def flow_output(verbose: bool, progress: TextIO | None) -> Iterator[None]:
    """While a flow runs in this process: its console log lines go to `progress` (stdout, or
    nowhere with None), one line per record without tracebacks, and so does whatever else writes
    to stderr; the run's log on the Prefect server keeps everything. With `verbose`, nothing
    changes (Prefect's own console lines, tracebacks included, on stderr)."""
    if verbose:
        yield
        return
    import prefect.main  # noqa: F401 - Prefect configures its logging on import: swap after it

    swapped = _stderr_handlers()
    ours = _OneLine(progress)
    loggers = {id(lg): lg for lg, _ in swapped}
    for logger, handler in swapped:
        logger.removeHandler(handler)
    for logger in loggers.values():
        logger.addHandler(ours)
    try:
        with contextlib.redirect_stderr(progress or io.StringIO()):
            yield
    finally:
        for logger in loggers.values():
            logger.removeHandler(ours)
        for logger, handler in swapped:
            logger.addHandler(handler)
