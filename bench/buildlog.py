"""Parse a 200,000-line BuildKit plain-progress log; print its figures (target parse_s <= 1 s).

The log is synthetic but shaped like a real one: many steps across stages, interleaved output
lines (pip/npm chatter), CACHED and DONE vertices, Cloud Build `Step #1: ` prefixes on half of
the lines, one failing step at the end. `peer_regex_s` is a straightforward regex-per-line parser
run on the same lines, as a yardstick; figures are medians of `--runs` runs.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import time

from bench.figures import print_figures
from shipyard.tasks.buildkit_log import parse_buildkit_log

STAGES = ["base", "python-deps", "node-deps", "builder", "runtime"]


def synthetic_log(n_lines: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    lines = ['#0 building with "shipyard" instance using docker-container driver']
    vertex = 0
    while len(lines) < n_lines - 10:
        vertex += 1
        stage = STAGES[vertex % len(STAGES)]
        name = f"[{stage} {vertex % 7 + 2}/9] RUN pip install --no-cache-dir package-{vertex}"
        lines.append(f"#{vertex} {name}")
        if rng.random() < 0.4:
            lines.append(f"#{vertex} CACHED")
            continue
        for i in range(rng.randint(5, 80)):
            lines.append(
                f"#{vertex} {i * 0.013:.3f} Collecting package-{vertex}-{i} (from -r r.txt)"
            )
        lines.append(f"#{vertex} DONE {rng.random() * 20:.1f}s")
    vertex += 1
    lines.append(f"#{vertex} [builder 3/3] RUN make")
    lines.append(
        f'#{vertex} ERROR: process "/bin/sh -c make" did not complete successfully: exit code: 2'
    )
    lines.append('ERROR: failed to solve: process "/bin/sh -c make" did not complete successfully')
    return [f"Step #1: {line}" if i % 2 else line for i, line in enumerate(lines)]


_PEER = re.compile(r"^(?:Step #\d+(?: - \"[^\"]*\")?: )?#(\d+) (.*)$")
_STEP = re.compile(r"^\[(\S+) (\d+)/(\d+)\] (.*)$")


def peer_parse(lines: list[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    status: dict[str, str] = {}
    for line in lines:
        m = _PEER.match(line)
        if not m:
            continue
        vertex, rest = m.groups()
        if vertex not in names:
            names[vertex] = rest
            if _STEP.match(rest):
                status[vertex] = "UNFINISHED"
        elif vertex in status:
            if rest == "CACHED":
                status[vertex] = "CACHED"
            elif rest.startswith("DONE"):
                status[vertex] = "RUN"
            elif rest.startswith("ERROR"):
                status[vertex] = "ERROR"
    return status


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    lines = synthetic_log(args.lines)
    ours, peer = [], []
    report = None
    for _ in range(args.runs):
        t = time.perf_counter()
        report = parse_buildkit_log(lines)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        peer_status = peer_parse(lines)
        peer.append(time.perf_counter() - t)
    assert report is not None
    assert sum(1 for s in peer_status.values() if s == "CACHED") == sum(
        1 for s in report.steps if s.status == "CACHED"
    ), "the peer and the parser disagree"
    parse_s, peer_s = statistics.median(ours), statistics.median(peer)
    print_figures(
        {
            "lines": report.lines,
            "steps": len(report.steps),
            "cached": report.cached,
            "run": report.run,
            "failed_step": report.failed_step.name if report.failed_step else None,
            "parse_s": round(parse_s, 4),
            "peer_regex_s": round(peer_s, 4),
            "speedup_vs_peer": round(peer_s / parse_s, 2),
            "lines_per_s": int(report.lines / parse_s),
            "target_s": 1.0,
            "runs": args.runs,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
