"""bench/scale.py's webhook burst: signed tag pushes through `shipyard webhook serve`, round robin
over the fleet's repositories (one per service), and what became of them: accepted, lost (no run),
twice (more than one run), the receiver's answer times, and the runs' own figures."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.scale_cpu import CpuMeter
from bench.scale_runs import phase_figures, run_times, wait_until_ended

if TYPE_CHECKING:
    from bench.scale import FleetSize


async def burst_phase(
    client: Any,
    service_of: dict[Any, str],
    size: FleetSize,
    api_url: str,
    workdir: Path,
    parts: dict[str, list[int]],
    global_limit: int | None = None,
) -> dict[str, Any]:
    """--deliveries signed tag pushes through the receiver, round robin over the services'
    repositories; lost / twice / accept latency, and the runs' own figures."""
    from bench.webhook import SECRET, deliver, delivery, journal_counts, p
    from sandbox.procs import free_port, spawn, stop_pid, wait_for_port

    services = list(service_of.values())
    port = free_port()
    receiver = spawn(
        [
            str(Path(sys.executable).with_name("shipyard")),
            *("webhook", "serve", "--port", str(port), "--log-level", "warning"),
            *("--journal", str(workdir / "journal.db")),
        ],
        workdir / "receiver.log",
        env={
            "PREFECT_API_URL": api_url,
            "PYTHONUNBUFFERED": "1",
            "SHIPYARD_WEBHOOK_SECRET": SECRET,
            "SHIPYARD_WEBHOOK_REPOS": ",".join(f"acme/{s}={s}" for s in services),
        },
    )
    meter = CpuMeter({**parts, "receiver": [receiver.pid]})
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 120, receiver)
        meter.start()
        tags = [f"v2.{j}.0" for j in range(size.deliveries)]
        repo_of = {t: f"acme/{services[j % len(services)]}" for j, t in enumerate(tags)}
        up = asyncio.Event()
        up.set()
        started = time.time()
        answers = await deliver(
            [
                (f"http://127.0.0.1:{port}/webhook", *delivery(t, repository=repo_of[t]))
                for t in tags
            ],
            size.parallel,
            [0],
            up,
        )
        send_s = time.time() - started
        accepted = [
            t
            for t, (r, _, _, _) in zip(tags, answers, strict=True)
            if r.status_code == 409
            or (r.status_code == 202 and r.json().get("status") == "accepted")
        ]
        runs = await wait_until_ended(
            client,
            list(service_of),
            set(tags),
            expect=len(accepted),
            timeout=size.timeout,
            stall=size.stall,
            label="burst",
        )
        journal = await journal_counts(port)
        times = await run_times(client, runs, service_of)
        figures = phase_figures(times, len(tags), started, global_limit)
        figures["cpu"] = meter.stop(figures["completed"], figures["wall_s"])
    finally:
        stop_pid(receiver.pid)
    by_tag: dict[str, int] = {}
    for run in runs:
        tag = run.parameters.get("git_tag")
        by_tag[tag] = by_tag.get(tag, 0) + 1
    accept_ms = [ms for r, ms, _, _ in answers if r.status_code in (202, 409)]
    lost = sorted(set(tags) - set(by_tag))
    twice = sorted(t for t, n in by_tag.items() if n > 1)
    figures.update(
        deliveries=len(tags),
        accepted=len(accepted),
        statuses=sorted({r.status_code for r, _, _, _ in answers}),
        lost=len(lost),
        lost_tags=lost[:20],
        twice=len(twice),
        twice_tags=twice[:20],
        webhook_p95_accept_ms=p(accept_ms, 0.95),
        webhook_p50_accept_ms=p(accept_ms, 0.50),
        send_s=round(send_s, 2),
        journal_states=journal,
    )
    return figures
