"""BuildKit's `--progress plain` log: numbered vertices, CACHED / DONE / ERROR lines."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

Emit = Callable[[str], None]


class Progress:
    """BuildKit's `--progress plain` output, one line per emit."""

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self.n = 0
        self.t0 = time.monotonic()

    def vertex(self, name: str) -> Vertex:
        self.n += 1
        self.emit(f"#{self.n} {name}")
        return Vertex(self, self.n, name)


@dataclass
class Vertex:
    progress: Progress
    n: int
    name: str
    started: float = field(default_factory=time.monotonic)

    def line(self, text: str) -> None:
        self.progress.emit(f"#{self.n} {text}")

    def log(self, text: str) -> None:
        self.line(f"{time.monotonic() - self.started:.3f} {text}")

    def done(self) -> None:
        self.line(f"DONE {time.monotonic() - self.started:.1f}s")

    def cached(self) -> None:
        self.line("CACHED")

    def error(self, message: str) -> None:
        self.line(f"ERROR: {message}")


# ---------------------------------------------------------------- the build
