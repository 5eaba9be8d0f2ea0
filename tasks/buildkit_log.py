"""Parse BuildKit's plain progress log (`docker buildx build --progress plain`) into steps.

Lines look like::

    #7 [python-deps 3/3] RUN python3 -m pip install --no-cache-dir -r requirements.txt
    #7 0.512 Collecting fastapi
    #7 CACHED                     (or: #7 DONE 12.3s / #7 ERROR: process … / #7 CANCELED)
    ERROR: failed to solve: process "/bin/sh -c …" did not complete successfully: exit code: 1

Vertices interleave; the first line of a vertex number is its name, later lines are its output or
its end state. Cloud Build may prefix each line with `Step #1: ` or `Step #1 - "id": `; that is
stripped. Steps are the vertices named `[stage i/n] INSTRUCTION`; `[internal]`, cache import and
export vertices are not steps. FROM steps are kept in `steps` but left out of the counts and the
hit rate (they do no work of their own): the hit rate is CACHED / (CACHED + RUN) over the rest.

Speed: one regex scan over the joined text picks the event lines (names and end states) and
skips output lines inside the regex engine; the failing step's output is collected afterwards.
200,000 lines parse in a fraction of a second (bench/buildlog.py).
"""

from __future__ import annotations

import contextlib
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

CACHED, RUN, ERROR, CANCELED, UNFINISHED = "CACHED", "RUN", "ERROR", "CANCELED", "UNFINISHED"


@dataclass
class BuildStep:
    vertex: str
    stage: str
    index: int
    total: int
    instruction: str
    status: str = UNFINISHED
    seconds: float | None = None
    error: str | None = None
    output: deque[str] = field(default_factory=lambda: deque(maxlen=20), repr=False)

    @property
    def name(self) -> str:
        where = f"{self.stage} " if self.stage else ""
        return f"[{where}{self.index}/{self.total}] {self.instruction}"

    @property
    def is_from(self) -> bool:
        return self.instruction.startswith("FROM ")


@dataclass
class BuildLogReport:
    steps: list[BuildStep]
    error: str | None  # the final `ERROR: failed to solve: …`, if any
    lines: int

    @property
    def counted(self) -> list[BuildStep]:
        return [s for s in self.steps if not s.is_from]

    @property
    def cached(self) -> int:
        return sum(1 for s in self.counted if s.status == CACHED)

    @property
    def run(self) -> int:
        return sum(1 for s in self.counted if s.status == RUN)

    @property
    def hit_rate(self) -> float:
        done = self.cached + self.run
        return self.cached / done if done else 0.0

    @property
    def failed_step(self) -> BuildStep | None:
        return next((s for s in self.steps if s.status == ERROR), None)

    def failure(self) -> tuple[str, str | None]:
        """(failing step name or "", its error with its last output lines, else the solve error)."""
        failed = self.failed_step
        error = (failed.error if failed else None) or self.error
        if failed is not None and failed.output:
            error = (error or "") + " (step output: " + " | ".join(list(failed.output)[-3:]) + ")"
        return (failed.name if failed else ""), error

    def by_stage(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for step in self.counted:
            row = out.setdefault(step.stage, {CACHED: 0, RUN: 0, ERROR: 0})
            if step.status in row:
                row[step.status] += 1
        return out


# Only the lines that matter: a vertex named `[...] ...` (a step, or `[internal] ...`), or a
# vertex's end state. Output lines (`#7 0.512 ...`, the bulk of a log) never match, so the regex
# engine, not Python, skips them.
_PREFIX = r'(?:Step #\d+(?: - "[^"\n]*")?: )?'
_EVENT = re.compile(
    r"\n"
    + _PREFIX
    + r"#(\d+) (\[[^\]\n]*\] [^\n]*|CACHED|DONE [^\n]*|ERROR[^\n]*|CANCELED[^\n]*)(?=\r?\n)"
)
_LINE_START = re.compile(_PREFIX + "$")
SOLVE = "ERROR: failed to solve"


def _parse_step_name(vertex: str, rest: str) -> BuildStep | None:
    """`[python-deps 3/3] RUN …` (or `[3/3] RUN …` when the only stage has no name) -> a
    BuildStep; None for `[internal] …` and the like."""
    close = rest.find("] ")
    if close == -1:
        return None
    label = rest[1:close]
    stage, _, count = label.rpartition(" ")  # `[2/4]`: a single-stage Dockerfile's step
    index, slash, total = count.partition("/")
    if not slash or not index.isdigit() or not total.isdigit():
        return None
    return BuildStep(vertex, stage, int(index), int(total), rest[close + 2 :])


def parse_buildkit_log(lines: Iterable[str] | str) -> BuildLogReport:
    """Lines (any iterable of str, with or without newlines) or the whole text."""
    if isinstance(lines, str):
        body = lines
    elif isinstance(lines, list):
        body = "\n".join(lines)
    else:
        body = "\n".join(line.rstrip("\n") for line in lines)
    count = body.count("\n") + 1 if body else 0
    text = "\n" + body.replace("\r\n", "\n").rstrip("\n") + "\n"  # every line between \n's
    steps: dict[str, BuildStep] = {}
    seen: set[str] = set()
    order: list[BuildStep] = []
    for match in _EVENT.finditer(text):
        vertex, rest = match.group(1), match.group(2)
        first = rest[0]
        if first == "[":
            if vertex in seen:
                continue  # the name printed again
            seen.add(vertex)
            step = _parse_step_name(vertex, rest)
            if step is not None:
                steps[vertex] = step
                order.append(step)
            continue
        step = steps.get(vertex)
        if step is None:
            continue
        if first == "C":
            step.status = CACHED if rest == "CACHED" else CANCELED
        elif first == "D":
            if step.status != CACHED:
                step.status = RUN
            with contextlib.suppress(ValueError):  # a DONE line without its duration
                step.seconds = float(rest[5:].rstrip("s"))
        else:
            step.status = ERROR
            step.error = rest[6:].strip()
    for step in order:
        if step.status == ERROR:
            step.output.extend(_output_of(text, step.vertex))
    at = text.rfind("\n" + SOLVE)
    if at == -1:
        at = text.rfind(": " + SOLVE)  # behind a Cloud Build `Step #1: ` prefix
        at = at + 1 if at != -1 else -1
    solve = text[at + 1 : text.find("\n", at + 1)][7:] if at != -1 else None
    return BuildLogReport(order, solve, count)


def _output_of(text: str, vertex: str) -> list[str]:
    """The output lines (`#N 0.512 …`) of one vertex, found with str.find (C speed)."""
    needle = f"#{vertex} "
    out: list[str] = []
    at = text.find(needle)
    while at != -1:
        start = text.rfind("\n", 0, at) + 1
        end = text.find("\n", at)
        if _LINE_START.match(text, start, at):
            rest = text[at + len(needle) : end]
            if rest[:1].isdigit():
                out.append(rest)
        at = text.find(needle, end)
    return out
