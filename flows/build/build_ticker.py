"""A build's progress on the run page: one INFO line at least every 15 s while it builds.

A Docker build streams BuildKit's plain progress (`#7 [builder 3/7] RUN pip install …`,
`#7 DONE 2.3s`, `#7 CACHED`); a long RUN may print nothing for minutes. The ticker follows the
stream (steps done of the steps known, the current step) and a timer thread logs where the build
is every `every_s`, whether or not the stream moved (issue 23: two minutes of build with no line).
"""

from __future__ import annotations

import re
import threading
import time
from types import TracebackType
from typing import Any

from shipyard.tasks.waiting import HEARTBEAT_S

_VERTEX = re.compile(
    r'^(?:Step #\d+(?: - "[^"]*")?: )?#(\d+) (\[[^\]]*\] .*|CACHED|DONE.*|ERROR.*)$'
)
_LABEL = re.compile(r"^\[(?:(.*) )?(\d+)/(\d+)\] (.*)$")


class BuildTicker:
    """`line` is the build's line callback; `with ticker:` runs the timer thread."""

    def __init__(self, logger: Any, what: str, every_s: float = HEARTBEAT_S):
        self.logger = logger
        self.what = what
        self.every_s = every_s
        self.started = time.monotonic()
        self.steps: dict[str, str] = {}  # vertex -> "[stage i/n] INSTRUCTION"
        self.totals: dict[str, int] = {}  # stage -> its step count
        self.done: set[str] = set()
        self.cached = 0
        self.current = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="build-ticker", daemon=True)

    def line(self, text: str) -> None:
        """One line of the build's progress (also kept at DEBUG)."""
        self.logger.debug("%s", text)
        match = _VERTEX.match(text.rstrip())
        if match is None:
            return
        vertex, rest = match.groups()
        if rest.startswith("["):
            label = _LABEL.match(rest)
            if label is not None and vertex not in self.steps:
                stage, _, total, _ = label.groups()
                self.steps[vertex] = rest[:160]
                self.totals[stage or ""] = max(self.totals.get(stage or "", 0), int(total))
                self.current = self.steps[vertex]
        elif vertex in self.steps and vertex not in self.done:
            self.done.add(vertex)
            self.cached += rest == "CACHED"

    def said(self) -> str:
        total = sum(self.totals.values())
        now = f", now: {self.current}" if self.current else ""
        return (
            f"{self.what}: {time.monotonic() - self.started:.0f} s, {len(self.done)} of "
            f"{total or '?'} steps done ({self.cached} CACHED){now}"
        )

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.logger.info("%s", self.said())

    def __enter__(self) -> BuildTicker:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
