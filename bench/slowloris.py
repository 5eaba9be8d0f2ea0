"""Bench: well-behaved deliveries while slow senders stall (slow-loris), run by
`bench/webhook.py --slowloris [--senders 100] [--probes 60]`.

What runs, for real: the receiver (`shipyard webhook serve`, its own process, its defaults:
README "Production front"), on loopback, against the bench's Prefect server. The attack:
`--senders` connections each send half a request header, then one more header line every
second (never the blank line that ends the headers); when the receiver closes one, it is
re-opened after `--reopen` seconds. Once every sender is connected, `--probes` signed tag
pushes are sent one every `--every` seconds, each on a new connection, as GitHub sends them
(GitHub does not redeliver by itself: a delivery answered 503 or not at all is a lost release).
The same number of probes is sent before the attack, for the baseline.

Figures: p50/p95/max answer ms of the probes under attack and at baseline, lost (probes not
answered 202), the statuses, how many stalled connections were opened and closed by the
receiver, how many were open (client side) when each probe was sent. The bench fails (exit 1)
when a probe was lost, when p95 is above the goal (`--goal-ms`, 1000), or when the attack did
not happen (fewer than 3/4 of the receiver's per-client cap of stalled connections open at a
probe, or a stalled connection answered).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HALF_HEADER = b"POST /webhook HTTP/1.1\r\nHost: receiver\r\nUser-Agent: slow\r\n"


def _p(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


class Attack:
    """`senders` slow senders; each re-opens `reopen_s` after the receiver closed it."""

    def __init__(self, port: int, senders: int, reopen_s: float):
        self.port, self.senders, self.reopen_s = port, senders, reopen_s
        self.open = 0
        self.opened = 0
        self.closed_by_receiver = 0
        self.answered = 0  # a stalled connection that got an HTTP answer (none should)
        self.held_s: list[float] = []
        self.stop = asyncio.Event()

    async def _one(self) -> None:
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), 10
                )
            except (OSError, TimeoutError):
                await asyncio.sleep(self.reopen_s)
                continue
            self.opened += 1
            self.open += 1
            started = time.monotonic()
            try:
                writer.write(HALF_HEADER)
                while not self.stop.is_set():
                    try:
                        data = await asyncio.wait_for(reader.read(1024), 1.0)
                    except TimeoutError:
                        writer.write(f"X-Slow-{self.opened}: a\r\n".encode())  # a trickle
                        await writer.drain()
                        continue
                    if data:
                        self.answered += 1
                    self.closed_by_receiver += 1
                    break
            except OSError:
                self.closed_by_receiver += 1
            finally:
                self.open -= 1
                self.held_s.append(time.monotonic() - started)
                writer.close()
            await asyncio.sleep(self.reopen_s)

    async def run(self) -> None:
        await asyncio.gather(*(self._one() for _ in range(self.senders)))


def _delivery(secret: str, repository: str, tag: str) -> tuple[bytes, dict[str, str]]:
    commit = hashlib.sha1(tag.encode(), usedforsecurity=False).hexdigest()
    body = json.dumps(
        {
            "ref": f"refs/tags/{tag}",
            "before": "0" * 40,
            "after": commit,
            "created": True,
            "deleted": False,
            "head_commit": {"id": commit},
            "repository": {"full_name": repository},
        }
    ).encode()
    return body, {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256="
        + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
    }


async def _probes(
    port: int, secret: str, repository: str, tags: list[str], every_s: float, attack: Attack | None
) -> list[tuple[int | None, float, int]]:
    """(status or None, answer ms, stalled connections open when sent) per probe."""
    import httpx

    async def one(tag: str) -> tuple[int | None, float, int]:
        body, headers = _delivery(secret, repository, tag)
        open_now = attack.open if attack else 0
        started = time.perf_counter()
        try:  # a new connection per delivery, as GitHub's
            async with httpx.AsyncClient(timeout=30) as client:
                answer = await client.post(
                    f"http://127.0.0.1:{port}/webhook", content=body, headers=headers
                )
            status: int | None = answer.status_code
        except httpx.HTTPError:
            status = None
        return status, (time.perf_counter() - started) * 1000, open_now

    tasks = []
    for tag in tags:
        tasks.append(asyncio.create_task(one(tag)))
        await asyncio.sleep(every_s)
    return list(await asyncio.gather(*tasks))


async def slowloris(args: Any, api_url: str, workdir: Path) -> dict[str, Any]:
    """Start the receiver, take the baseline, attack, probe; the figures."""
    from sandbox.procs import free_port, spawn, stop_pid, wait_for_port
    from shipyard.deployments.webhook.settings import WebhookSettings

    secret = "bench-" + uuid.uuid4().hex
    repository = "acme/manga-translator"
    port = free_port()
    receiver = spawn(
        [
            str(Path(sys.executable).with_name("shipyard")),
            *("webhook", "serve", "--port", str(port), "--journal", str(workdir / "j.db")),
            *("--repo", f"{repository}=default", "--log-level", "warning"),
        ],
        workdir / "receiver-slowloris.log",
        env={"PREFECT_API_URL": api_url, "SHIPYARD_WEBHOOK_SECRET": secret},
    )
    defaults = WebhookSettings()
    attack = Attack(port, args.senders, args.reopen)
    major = int(time.time()) % 100000
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 120, receiver)
        baseline = await _probes(
            port,
            secret,
            repository,
            [f"v{major}.1.{i}" for i in range(args.probes)],
            args.every,
            None,
        )
        attacking = asyncio.create_task(attack.run())
        deadline = time.monotonic() + 30
        while attack.opened < args.senders and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # every sender has sent its half header and stalls
        started = time.monotonic()
        probed = await _probes(
            port,
            secret,
            repository,
            [f"v{major}.2.{i}" for i in range(args.probes)],
            args.every,
            attack,
        )
        attack_s = time.monotonic() - started
        attack.stop.set()
        await asyncio.wait_for(attacking, 30)
    finally:
        stop_pid(receiver.pid)

    ok_ms = [ms for status, ms, _ in probed if status == 202]
    statuses: dict[str, int] = {}
    for status, _, _ in probed:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    open_at = [n for _, _, n in probed]
    figures: dict[str, Any] = {
        "senders": args.senders,
        "probes": args.probes,
        "probe_every_s": args.every,
        "answered_202": len(ok_ms),
        "lost": args.probes - len(ok_ms),
        "statuses": statuses,
        "p50_answer_ms": _p(ok_ms, 0.50),
        "p95_answer_ms": _p(ok_ms, 0.95),
        "max_answer_ms": round(max(ok_ms), 1) if ok_ms else None,
        "baseline_p50_answer_ms": _p([ms for s, ms, _ in baseline if s == 202], 0.50),
        "baseline_p95_answer_ms": _p([ms for s, ms, _ in baseline if s == 202], 0.95),
        "baseline_lost": sum(1 for s, _, _ in baseline if s != 202),
        "attack_seconds": round(attack_s, 1),
        "stalled_opened": attack.opened,
        "stalled_closed_by_receiver": attack.closed_by_receiver,
        "stalled_answered": attack.answered,
        "stalled_open_at_probes_min": min(open_at) if open_at else 0,
        "stalled_open_at_probes_median": statistics.median(open_at) if open_at else 0,
        "stalled_held_median_s": round(statistics.median(attack.held_s), 2)
        if attack.held_s
        else None,
        "receiver_limits": {
            "header_timeout_s": defaults.header_timeout_s,
            "max_pending_per_client": defaults.max_pending_per_client,
            "max_pending": defaults.max_pending,
            "max_connections": defaults.max_connections,
        },
        "goal_p95_ms": args.goal_ms,
    }
    problems = []
    if figures["lost"]:
        problems.append(f"{figures['lost']} of {args.probes} deliveries lost ({statuses})")
    if figures["p95_answer_ms"] is not None and figures["p95_answer_ms"] > args.goal_ms:
        problems.append(f"p95 {figures['p95_answer_ms']} ms above the goal {args.goal_ms} ms")
    # The attack held when the receiver's per-client set of waiting connections was (about)
    # full at every probe: each probe then arrived into a full set. A few are always between
    # being shed and re-opening.
    wanted = int(0.75 * min(args.senders, defaults.max_pending_per_client))
    if figures["stalled_open_at_probes_min"] < wanted or attack.answered:
        problems.append(
            f"the attack did not hold: {figures['stalled_open_at_probes_min']} stalled "
            f"connections open at a probe (wanted {wanted}), {attack.answered} answered"
        )
    figures["problems"] = problems
    figures["passed"] = not problems
    return figures
