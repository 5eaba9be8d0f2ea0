"""Bench: N signed tag pushes for one service -> N release runs, one at a time, none lost.

    .venv/bin/python bench/webhook.py --json [--events 100] [--kill-receiver] [--api-url URL]
    .venv/bin/python bench/webhook.py --json --slowloris [--senders 100] [--probes 60]

(`--slowloris`: bench/slowloris.py, answer times of deliveries while slow senders stall.)
Every mode exits 1 when what it measures did not happen (`problems` in the figures): runs that
did not complete, tags lost or run twice, more than one run at once; deliveries lost.

What runs, for real: a Prefect server (a temporary one unless --api-url), the receiver
(`shipyard webhook serve`, its own process, its journal in the bench's directory), and the
`release` deployment of prefect.yaml served by `deployments/serve.py` in its own process, with
prefect.yaml's trigger and its concurrency limit (1, ENQUEUE). The N deliveries (one tag each,
vM.0.0 ... vM.0.N-1) are sent on loopback, --parallel (10) at a time; the bench then waits
until every run has ended. With --kill-receiver the receiver is SIGKILLed once half of them
were answered and started again on the same journal; a delivery whose connection failed is
sent again (same delivery id and body), as a GitHub redelivery would be.

The flow under that deployment is a stand-in with the release's signature (read from
flows/release/flow.py's source: `release_signature`, so every parameter the trigger passes is
one it takes; it holds the slot for --hold seconds), not the real release: even a dry run of the release reads Cloud
Run and Cloud Quotas (so it needs the sandbox and a ReleaseTarget block), and every run
starts in a fresh process that imports the Google clients (about 10 s of CPU here), which
for 100 runs in a row would make this a half-hour bench measuring imports. What this bench
measures is the path under test: webhook -> event -> trigger -> concurrency slot -> run.

Figures (JSON): events (202 accepted, or 409 to a redelivery: journaled before the kill),
runs, max_concurrent (most runs Running at once, from the runs' start/end times), lost / twice
(how many tags ended with no run / with more than one; the tags in lost_tags / twice_tags),
receiver_killed, resent (deliveries sent again after a failed connection), redeliveries_409,
journal_states (the receiver's journal at the end), trigger_actions_failed (actions Prefect
reported failed, which the receiver's redrive emits again) and redriven_and_ran,
p95_accept_ms and p50_accept_ms of the receiver, and the same for a bare POST /api/events to
the server in the same run (the peer): accept_vs_post_events_p95.

The serving process runs one flow at a time (`--runner-limit 1`, as `shipyard serve --limit 1`):
it proposes the next run only when the last one ended, so waiting runs stay Scheduled. With
`--runner-limit 0` only the deployment's limit holds the queue: every run turned away at the same
moment is due again together, and one run starts per slot wait (10 runs: 166 s at the default 30 s).

The temporary server is Prefect's SQLite test server (the embedded default). Under a burst its
write lock stalls now and then (a server-side wait of up to 60 s); the receiver answers from its
own journal, so such a stall delays the runs, not the answers. To run it against a server on
PostgreSQL:

    apt-get install -y postgresql && pg_ctlcluster 15 main start
    runuser -u postgres -- psql -c "CREATE USER prefect PASSWORD 'prefect'" \
        -c "CREATE DATABASE prefect_bench OWNER prefect"
    PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://prefect:prefect@127.0.0.1/prefect_bench \
        prefect server start --port 4299 &
    python bench/webhook.py --json --api-url http://127.0.0.1:4299/api

Measured here (2 cores shared with other work, 100 events, 10 at a time, SQLite test server):
100 runs, max_concurrent 1, 0 lost, 0 twice; p95_accept_ms 252 (p50 50), and with
--kill-receiver (killed after 55 answers, back in 3.8 s, 8 deliveries resent, 1 answered 409)
p95_accept_ms 215 (p50 48), 0 lost, 0 twice; a second run: killed after 50, 10 resent,
2 answered 409, p95 224, 0 lost, 0 twice. Before the journal: p95 62737 on SQLite (one
60 s stall inside the server), 1794 on PostgreSQL.
With the stand-in's signature read from the release (which takes `tagged_at` since), under
load 10-16 from other work: completed 100, max_concurrent 1, 0 lost, 0 twice, p95_accept_ms
93 (p50 40), all ended in 1462 s. Before that fix every run failed (SignatureMismatchError):
completed 0, max_concurrent 0, and the bench still exited 0; it now exits 1 (`problems`).
`--slowloris` (100 senders, 60 deliveries): 60 answered 202, p95 184 ms; before, 28 of 30
were answered 503.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import datetime as dt
import inspect
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from prefect import Flow, flow

REPOSITORY = "acme/manga-translator"
SECRET = "bench-" + uuid.uuid4().hex
SLOT_WAIT_ENV = "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS"


# ---------------------------------------------------------------- the stand-in, served


HOLD_ENV = "SHIPYARD_BENCH_HOLD_SECONDS"
RELEASE_FLOW = Path(__file__).resolve().parents[1] / "flows" / "release" / "flow.py"


def release_signature(source: Path = RELEASE_FLOW) -> inspect.Signature:
    """The release flow's parameters (names, order, kinds, defaults), read from its source.

    Not imported: the release module pulls in prefect-gcp and the Google clients (2.5 s of CPU
    per run process here, for 100 runs); the stand-in must only accept exactly what the
    trigger passes to the release (`tagged_at` was added there and every run of a stand-in
    without it failed with SignatureMismatchError). Types: bool for a bool default, else text
    (`OptionalText`, `TargetParam` are strings in the release's parameter schema too)."""
    tree = ast.parse(source.read_text())
    (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "release"]
    args = fn.args
    positional = args.posonlyargs + args.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += args.defaults
    kinds = [inspect.Parameter.POSITIONAL_OR_KEYWORD] * len(positional)
    pairs = list(zip(positional, defaults, kinds, strict=True)) + [
        (a, d, inspect.Parameter.KEYWORD_ONLY)
        for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
    ]
    parameters = []
    for arg, default_node, kind in pairs:
        default = (
            inspect.Parameter.empty if default_node is None else ast.literal_eval(default_node)
        )
        annotation: Any = bool if isinstance(default, bool) else str
        if default_node is not None and not isinstance(default, bool):
            annotation = str | None  # a trigger may render an absent value as null
        parameters.append(inspect.Parameter(arg.arg, kind, default=default, annotation=annotation))
    return inspect.Signature(parameters, return_annotation=dict[str, Any])


RELEASE_SIGNATURE = release_signature()


def _standin(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Stand-in for shipyard.flows.release.flow.release: its parameters (RELEASE_SIGNATURE, so
    Prefect validates and binds exactly those); holds the slot a while."""
    parameters = RELEASE_SIGNATURE.bind(*args, **kwargs).arguments
    time.sleep(float(os.environ.get(HOLD_ENV, "0.5")))
    return {k: parameters.get(k) for k in ("git_tag", "commit", "tagged_at", "dry_run")}


_standin.__signature__ = RELEASE_SIGNATURE  # type: ignore[attr-defined]  # the release's
# The served entrypoint is `bench.webhook.<the function's name>`: that name must be the flow.
_standin.__name__ = _standin.__qualname__ = "release_standin"
release_standin: Flow[..., dict[str, Any]] = flow(
    name="release", flow_run_name="release-{git_tag}"
)(_standin)


async def serve_standin(hold_s: float, query_s: float, prefetch_s: float, limit: int) -> None:
    """The release deployment of prefect.yaml, served with the stand-in. The flow is imported
    as `bench.webhook` (not `__main__`) so that each run's own process can import it too."""
    from prefect.flows import aserve

    from bench.webhook import release_standin as standin
    from shipyard.deployments.serve import read_specs, to_runner_deployment

    os.environ[HOLD_ENV] = str(hold_s)
    (spec,) = [s for s in read_specs() if s.name == "release"]
    deployment = await to_runner_deployment(spec, flow=standin)
    await aserve(
        deployment,
        query_seconds=query_s,
        prefetch_seconds=prefetch_s,
        limit=limit or None,
        print_starting_message=False,
    )


# ---------------------------------------------------------------- helpers


def p(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    points = [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals]
    best = current = 0
    for _, delta in sorted(points, key=lambda x: (x[0], x[1])):  # ends before starts
        current += delta
        best = max(best, current)
    return best


def delivery(tag: str, repository: str = REPOSITORY) -> tuple[bytes, dict[str, str]]:
    import hashlib
    import hmac

    body = json.dumps(
        {
            "ref": f"refs/tags/{tag}",
            "after": hashlib.sha1(tag.encode(), usedforsecurity=False).hexdigest(),
            "created": True,
            "deleted": False,
            "repository": {"full_name": repository},
        }
    ).encode()
    return body, {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256="
        + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
    }


async def timed_posts(requests: list[tuple[str, bytes, dict[str, str]]], parallel: int):
    import httpx

    limit = asyncio.Semaphore(parallel)
    async with httpx.AsyncClient(timeout=300) as client:

        async def one(url: str, body: bytes, headers: dict[str, str]):
            async with limit:
                started = time.perf_counter()
                response = await client.post(url, content=body, headers=headers)
                return response, (time.perf_counter() - started) * 1000

        return await asyncio.gather(*(one(*r) for r in requests))


async def deliver(
    requests: list[tuple[str, bytes, dict[str, str]]],
    parallel: int,
    answered: list[int],
    up: asyncio.Event,
) -> list[tuple[Any, float, str, int]]:
    """POST each delivery; one whose connection failed (the receiver was killed) is sent again,
    same delivery id and body, once the receiver is back: what a GitHub redelivery does.
    Returns (final response, its latency in ms, delivery id, attempts) per request."""
    import httpx

    limit = asyncio.Semaphore(parallel)
    async with httpx.AsyncClient(timeout=300) as client:

        async def one(url: str, body: bytes, headers: dict[str, str]):
            tries = 0
            async with limit:
                while True:
                    await up.wait()
                    tries += 1
                    started = time.perf_counter()
                    try:
                        response = await client.post(url, content=body, headers=headers)
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
                        continue
                    answered[0] += 1
                    ms = (time.perf_counter() - started) * 1000
                    return response, ms, headers["X-GitHub-Delivery"], tries

        return await asyncio.gather(*(one(*r) for r in requests))


async def journal_counts(port: int) -> dict[str, int] | None:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=10) as client:
            return (await client.get(f"http://127.0.0.1:{port}/healthz")).json().get("journal")
    except httpx.HTTPError:
        return None


async def wait_for(predicate, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(every)
    raise TimeoutError(f"{what} not within {timeout:.0f} s")


# ---------------------------------------------------------------- the bench


async def bench(args: argparse.Namespace, api_url: str, workdir: Path) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from sandbox.procs import free_port, spawn, stop_pid, wait_for_port
    from shipyard.deployments.webhook.parse import EVENT_NAMESPACE

    env = {"PREFECT_API_URL": api_url, "PYTHONUNBUFFERED": "1"}
    served = spawn(
        [
            sys.executable,
            __file__,
            "_serve",
            *("--hold", str(args.hold), "--query", str(args.query)),
            *("--prefetch", str(args.prefetch), "--runner-limit", str(args.runner_limit)),
        ],
        workdir / "serve.log",
        env=env,
    )
    port = free_port()

    def start_receiver():
        return spawn(
            [
                str(Path(sys.executable).with_name("shipyard")),
                *("webhook", "serve", "--port", str(port)),
                *("--repo", f"{REPOSITORY}=default", "--journal", str(workdir / "journal.db")),
            ],
            workdir / "receiver.log",
            env={**env, "SHIPYARD_WEBHOOK_SECRET": SECRET},
        )

    receiver = start_receiver()
    killed = {"at_answer": None, "restart_s": None}
    try:
        async with get_client() as client:

            async def deployment():
                try:
                    found = await client.read_deployment_by_name("release/release")
                except Exception:  # noqa: BLE001 - not there yet
                    return None
                automations = await client.read_resource_related_automations(
                    f"prefect.deployment.{found.id}"
                )
                return found if automations else None

            release = await wait_for(deployment, 300, "the served release deployment")
            wait_for_port("127.0.0.1", port, 120, proc=receiver)

            # Peer: the server's own event intake, same concurrency, an event no trigger wants.
            peer_events = [
                json.dumps(
                    [
                        {
                            "occurred": dt.datetime.now(dt.UTC).isoformat(),
                            "event": "shipyard.bench.peer",
                            "resource": {"prefect.resource.id": "shipyard.bench"},
                            "id": str(uuid.uuid4()),
                        }
                    ]
                ).encode()
                for _ in range(args.events)
            ]
            peer = await timed_posts(
                [
                    (f"{api_url}/events", b, {"Content-Type": "application/json"})
                    for b in peer_events
                ],
                args.parallel,
            )

            # A fresh major per bench run: runs of an earlier bench on the same server differ.
            major = int(time.time()) % 100000
            tags = [f"v{major}.0.{i}" for i in range(args.events)]
            sent_at = time.monotonic()
            answered = [0]
            up = asyncio.Event()
            up.set()

            async def kill_mid_burst() -> None:
                """SIGKILL the receiver once half the deliveries were answered, restart it."""
                nonlocal receiver
                while answered[0] < args.events // 2:
                    await asyncio.sleep(0.005)
                up.clear()
                os.kill(receiver.pid, signal.SIGKILL)
                receiver.wait()
                killed["at_answer"] = answered[0]
                restarted = time.monotonic()
                receiver = start_receiver()
                await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 120, receiver)
                killed["restart_s"] = round(time.monotonic() - restarted, 2)
                up.set()

            killer = asyncio.create_task(kill_mid_burst()) if args.kill_receiver else None
            answers = await deliver(
                [(f"http://127.0.0.1:{port}/webhook", *delivery(t)) for t in tags],
                args.parallel,
                answered,
                up,
            )
            if killer is not None:
                await killer
            send_s = time.monotonic() - sent_at
            # A redelivery answered 409 was journaled before the kill: it counts as received.
            event_of = {
                t: str(uuid.uuid5(EVENT_NAMESPACE, f"github:{delivery_id}"))
                for t, (r, _, delivery_id, _) in zip(tags, answers, strict=True)
                if (r.status_code == 202 and r.json().get("status") == "accepted")
                or r.status_code == 409
            }
            accepted = list(event_of)
            tag_of_event = {e: t for t, e in event_of.items()}
            since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)

            async def failed_actions() -> set[str]:
                """Tags whose trigger action failed on the server (it is not retried)."""
                from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

                page = await client.read_events(
                    filter=EventFilter(
                        event=EventNameFilter(name=["prefect.automation.action.failed"]),
                        occurred=EventOccurredFilter(since=since),
                    ),
                    limit=50,
                )
                failed = set()
                while True:
                    for event in page.events:
                        for related in event.related:
                            event_id = related.id.removeprefix("prefect.event.")
                            if event_id in tag_of_event:
                                failed.add(tag_of_event[event_id])
                    if not page.next_page:
                        return failed
                    page = await client.read_events_page(page.next_page)

            wanted = set(tags)

            async def all_runs():
                out, offset = [], 0
                while True:
                    page = await client.read_flow_runs(
                        deployment_filter=DeploymentFilter(
                            id=DeploymentFilterId(any_=[release.id])
                        ),
                        limit=200,
                        offset=offset,
                    )
                    out += [r for r in page if r.parameters.get("git_tag") in wanted]
                    if len(page) < 200:
                        return out
                    offset += 200

            last_report = [0.0]
            progress: dict[str, Any] = {"seen": None, "at": time.monotonic()}

            async def drained():
                runs = await all_runs()
                final = [r for r in runs if r.state and r.state.is_final()]
                have = {r.parameters.get("git_tag") for r in runs}
                if (len(runs), len(final)) != progress["seen"]:
                    progress.update(seen=(len(runs), len(final)), at=time.monotonic())
                if time.monotonic() - last_report[0] > 15:
                    last_report[0] = time.monotonic()
                    print(
                        f"  {len(runs)} runs, {len(final)} ended, "
                        f"{time.monotonic() - sent_at:.0f} s",
                        file=sys.stderr,
                    )
                everything_ran = have >= set(accepted) and len(final) == len(runs)
                # Missing runs and nothing moved for --stall seconds: they are not coming
                # (the receiver's redrive needs a few seconds per failed action).
                stalled = len(final) == len(runs) and time.monotonic() - progress["at"] > args.stall
                return runs if everything_ran or stalled else None

            runs = await wait_for(drained, args.timeout, "all runs ended", every=1.0)
            drain_s = time.monotonic() - sent_at
            # A trigger that fired twice would show up late; the deliveries all ended long ago.
            runs = await all_runs()
            failed = sorted(await failed_actions())
        journal = await journal_counts(port)
    finally:
        stop_pid(receiver.pid)
        stop_pid(served.pid)

    by_tag: dict[str, int] = {}
    for run in runs:
        by_tag[run.parameters.get("git_tag")] = by_tag.get(run.parameters.get("git_tag"), 0) + 1
    intervals = [
        (r.start_time.timestamp(), r.end_time.timestamp())
        for r in runs
        if r.start_time is not None and r.end_time is not None
    ]
    accept_ms = [ms for r, ms, _, _ in answers if r.status_code in (202, 409)]
    # A tag whose delivery was never received (neither accepted nor known) is lost too.
    unanswered = sorted(set(tags) - set(accepted))
    peer_ms = [ms for r, ms in peer if r.status_code == 204]
    completed = sum(1 for r in runs if r.state.is_completed())
    states: dict[str, int] = {}
    for run in runs:
        states[run.state.name] = states.get(run.state.name, 0) + 1
    not_completed = [r for r in runs if not r.state.is_completed()]
    return {
        "events": len(accepted),
        "runs": len(runs),
        "completed": completed,
        "run_states": states,
        # Why the first run that did not complete ended so (e.g. a SignatureMismatchError).
        "first_failure": (
            f"{not_completed[0].state.name}: {not_completed[0].state.message}"[:300]
            if not_completed
            else None
        ),
        "max_concurrent": max_overlap(intervals),
        "lost": len([t for t in accepted if t not in by_tag]) + len(unanswered),
        "lost_tags": sorted(t for t in accepted if t not in by_tag) + unanswered,
        "trigger_actions_failed": len(failed),
        "redriven_and_ran": sorted(t for t in failed if t in by_tag),
        "twice": len([t for t, n in by_tag.items() if n > 1]),
        "twice_tags": sorted(t for t, n in by_tag.items() if n > 1),
        "p95_accept_ms": p(accept_ms, 0.95),
        "p50_accept_ms": p(accept_ms, 0.50),
        "peer_p95_post_events_ms": p(peer_ms, 0.95),
        "peer_p50_post_events_ms": p(peer_ms, 0.50),
        "accept_vs_post_events_p95": (
            round(p(accept_ms, 0.95) / p(peer_ms, 0.95), 2) if accept_ms and peer_ms else None
        ),
        "statuses": sorted({r.status_code for r, _, _, _ in answers}),
        "receiver_killed": bool(args.kill_receiver),
        "killed_after_answers": killed["at_answer"],
        "receiver_restart_seconds": killed["restart_s"],
        "resent": sum(tries - 1 for _, _, _, tries in answers),
        "redeliveries_409": sum(1 for r, _, _, _ in answers if r.status_code == 409),
        "journal_states": journal,
        "send_seconds": round(send_s, 2),
        "all_ended_seconds": round(drain_s, 1),
        "median_run_seconds": (
            round(statistics.median(e - s for s, e in intervals), 2) if intervals else None
        ),
        "flow": "stand-in with the release's parameters, served under prefect.yaml's release "
        "deployment (trigger + concurrency limit 1 ENQUEUE)",
        "hold_seconds": args.hold,
        "slot_wait_seconds": os.environ.get(SLOT_WAIT_ENV, "30 (Prefect default)"),
        "runner_limit": args.runner_limit or None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "_serve"])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=10, help="requests in flight")
    parser.add_argument("--hold", type=float, default=0.5, help="seconds each run holds")
    parser.add_argument("--query", type=float, default=1.0, help="runner poll seconds")
    parser.add_argument(
        "--prefetch",
        type=float,
        default=10.0,
        help="runner: submit runs due within this many seconds (Prefect's default, 10)",
    )
    parser.add_argument(
        "--runner-limit",
        type=int,
        default=1,
        help="runs at once in the serving process, as `shipyard serve --limit 1` (0: no limit, "
        "then only the deployment's concurrency limit holds the queue)",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="for all runs to end")
    parser.add_argument(
        "--stall", type=float, default=120, help="stop when runs are missing and nothing moved"
    )
    parser.add_argument(
        "--slot-wait",
        default=None,
        help="server: seconds before a run that found the slot taken is retried "
        "(default: Prefect's, 30)",
    )
    parser.add_argument("--api-url", help="use this Prefect server instead of a temporary one")
    parser.add_argument(
        "--kill-receiver",
        action="store_true",
        help="SIGKILL the receiver once half the deliveries were answered and restart it; "
        "deliveries whose connection failed are redelivered",
    )
    parser.add_argument(
        "--slowloris",
        action="store_true",
        help="instead of the burst: well-behaved deliveries while --senders slow senders stall "
        "(bench/slowloris.py); p95 answer time and deliveries lost",
    )
    parser.add_argument("--senders", type=int, default=100, help="--slowloris: slow senders")
    parser.add_argument("--probes", type=int, default=60, help="--slowloris: deliveries sent")
    parser.add_argument("--every", type=float, default=0.5, help="--slowloris: seconds apart")
    parser.add_argument(
        "--reopen", type=float, default=0.5, help="--slowloris: a closed sender re-opens after"
    )
    parser.add_argument("--goal-ms", type=float, default=1000.0, help="--slowloris: p95 goal")
    args = parser.parse_args()

    if args.mode == "_serve":
        asyncio.run(serve_standin(args.hold, args.query, args.prefetch, args.runner_limit))
        return

    from bench.figures import print_figures

    workdir = Path(tempfile.mkdtemp(prefix="shipyard-bench-webhook-"))
    # The temporary server's settings. The slot wait stays Prefect's 30 s unless asked: with
    # many runs waiting one is due again soon after the slot frees, and each retry is a state
    # change (writes and an event) that a shorter wait multiplies on SQLite. SQLite waits up
    # to 30 s for a write lock instead of 10 (as Prefect's own test mode does).
    if args.slot_wait is not None:
        os.environ[SLOT_WAIT_ENV] = args.slot_wait
    os.environ.setdefault("PREFECT_SERVER_DATABASE_TIMEOUT", "30")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")

    run = bench
    if args.slowloris:
        from bench.slowloris import slowloris as run
    if args.api_url:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        url = args.api_url.rstrip("/")
        with temporary_settings({PREFECT_API_URL: url}):
            figures = asyncio.run(run(args, url, workdir))
    else:
        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=300):
            figures = asyncio.run(run(args, PREFECT_API_URL.value(), workdir))
    figures["logs"] = str(workdir)
    if not args.slowloris:  # the slow-loris bench judges its own figures
        figures["problems"] = problems(figures, args.events)
    figures["passed"] = not figures["problems"]
    print_figures(figures, args.json)
    if figures["problems"]:
        sys.exit(1)  # the bench measured runs that did not run: its figures mean nothing


def problems(figures: dict[str, Any], events: int) -> list[str]:
    """What makes the burst's figures void: runs that never ran or did not complete, tags lost
    or run twice, more than one run at once."""
    out = []
    if figures["events"] != events:
        out.append(f"{events - figures['events']} of {events} deliveries not accepted")
    if figures["completed"] != events or figures["runs"] != events:
        out.append(
            f"{figures['completed']} of {events} runs completed ({figures['runs']} runs: "
            f"{figures['run_states']}; first failure: {figures['first_failure']})"
        )
    if figures["lost"] or figures["twice"]:
        out.append(f"{figures['lost']} tags lost, {figures['twice']} run twice")
    if figures["max_concurrent"] != 1:
        out.append(f"max_concurrent {figures['max_concurrent']}, not 1")
    return out


if __name__ == "__main__":
    main()
