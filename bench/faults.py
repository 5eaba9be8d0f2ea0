"""Fault matrix bench: every case of bench/fault_matrix.py, plus releases killed with SIGKILL
at several steps and run again, and the webhook cases of bench/webhook_faults.py, on the local
cloud (real Prefect server, sandbox).

JSON (--json): cases, passed, invariant_violations, releases_lost (a case whose release ended in
no known state: neither its expected outcome nor a clear error), duplicate_revisions,
slots_left_held, records_wrong (release record or ledger fields that differ from the truth:
commit, image, tag time, CPU baseline), runs_left_running (flow runs of a case, parents or
subflows, still Running or Pending when it ended), seconds, and per case: id, expect, got,
passed, detail. Goal (issues 15, 24): all cases passed and every count 0.

It starts its own Prefect server (a temporary home, a free loopback port) and talks to no other:
with PREFECT_API_URL set it refuses, exit 2, one line; a profile's setting is never read.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

KNOWN = {"released", "rolled_back", "cpu_fallback", "error", "swept"}
ROOT = Path(__file__).resolve().parent.parent
_GIT = ["git", "-c", "user.email=bench@shipyard.invalid", "-c", "user.name=shipyard bench"]


def build_blocks_factory(cloud, workdir: Path):
    """`build_blocks(service, timeout_s)` for the build cases: a git repository holding
    examples/page-service (made once), a recorded base-image pin, and per service a
    BuildSettings block with its own image repository (so every case builds)."""
    from prefect.variables import Variable

    from bench.fault_kills import TAG, TAGGED_AT
    from sandbox.seed import seed_cuda_image
    from shipyard.blocks.build_settings import BuildSettings
    from shipyard.flows.mirror.flow import pin_variable_name

    repo = workdir / "app-repo"
    shutil.copytree(
        ROOT / "examples" / "page-service",
        repo / "page-service",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "app"]):
        subprocess.run([*_GIT, "-C", str(repo), *args], check=True)
    # v1.0.0 tagged at a known time: the records must carry it (bench/fault_records.py: Truth)
    subprocess.run(
        [*_GIT, "-C", str(repo), "tag", "-a", TAG, "-m", f"release {TAG}"],
        check=True,
        env={**os.environ, "GIT_COMMITTER_DATE": TAGGED_AT},
    )
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    host = cloud.info.registry_host
    digest = seed_cuda_image(cloud.info.registry_url, "bench-faults/cuda").digest
    base = f"{host}/bench-faults/cuda"
    Variable.set(
        pin_variable_name(base),
        {"destination": base, "digest": digest, "image": f"{base}@{digest}"},
        overwrite=True,
    )

    def build_blocks(service: str, timeout_s: float) -> tuple[dict, str]:
        name = f"bench-{service}"[:60]
        BuildSettings(
            image_repository=f"{host}/{service}/page-service",
            git_url=f"file://{repo}",
            source_dir="page-service",
            poll_s=0.05,
            timeout_s=int(timeout_s),
        ).save(name, overwrite=True)
        return {"base_image": base, "build_settings_block": name}, commit

    return build_blocks


def _kill_cases(cloud, make_target, build_blocks, only: str) -> list[dict]:
    """bench/fault_kills.py's KILL_CASES: each release killed (SIGKILL) at its point, then run
    again or swept; checked for invariants, duplicates, the slot, the record, runs left."""
    from bench.fault_kills import KILL_CASES, run_kill_case
    from shipyard.deployments.demo.run import stage

    def _stage(base: str = "healthy", **overrides):
        return stage(cloud, base, **overrides)

    out = []
    for i, case in enumerate(KILL_CASES):
        if only in case.id:
            outcome = run_kill_case(
                case, _stage, make_target, cloud.admin, f"bench-kill-{i}", build_blocks
            )
            out.append(asdict(outcome))
    return out


def foreign_api() -> str | None:
    """Why this bench must not run here (one line), or None: it starts its own Prefect server,
    in its own home, and never talks to another one (a real server's runs are not its to make)."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return (
            f"bench/faults.py refuses to use PREFECT_API_URL={url}: it starts and uses only its "
            "own Prefect server; run it without PREFECT_API_URL (env -u PREFECT_API_URL ...)"
        )
    return None


def isolate_prefect_home(workdir: Path) -> None:
    """Before Prefect is imported: a home and profiles file of the bench's own, so no profile,
    home or database of the user's is read (a profile's PREFECT_API_URL included)."""
    home = workdir / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_PROFILES_PATH"] = str(home / "profiles.toml")
    os.environ.pop("PREFECT_PROFILE", None)
    # The sweep after a "nobody re-runs" case runs its steps outside any flow run.
    os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"


@contextmanager
def own_prefect_server(startup_timeout: float) -> Iterator[str]:
    """A Prefect server this process starts on a free loopback port, and the API URL; refuses
    (RuntimeError) when the settings still point at another server."""
    import prefect.settings as ps

    from shipyard.deployments.demo.prefect_server import prefect_server

    configured = ps.get_current_settings().api.url
    if configured:
        raise RuntimeError(f"a Prefect API is configured ({configured}): refusing to use it")
    with prefect_server(startup_timeout) as server:
        url = server.wait()
        if not url.startswith("http://127.0.0.1:") or ps.PREFECT_API_URL.value() != url:
            raise RuntimeError(f"not the bench's own Prefect server: {url}")
        yield url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-kill", action="store_true", help="skip the SIGKILL cases")
    parser.add_argument("--no-webhook", action="store_true", help="skip the webhook cases")
    parser.add_argument("--only", default="", help="run the cases whose id contains this")
    args = parser.parse_args()
    refused = foreign_api()
    if refused:
        print(refused, file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="shipyard-bench-faults-"))
    isolate_prefect_home(workdir)
    logging.getLogger("prefect").setLevel(logging.CRITICAL)

    from bench.fault_matrix import CASES, run_case
    from bench.figures import print_figures
    from bench.webhook_faults import webhook_cases
    from shipyard.deployments.demo.run import local_cloud, sandbox_target, stage

    started = time.perf_counter()
    rows: list[dict] = []
    with (
        own_prefect_server(startup_timeout=300) as api_url,
        local_cloud(startup_timeout=180) as cloud,
    ):
        build_blocks = build_blocks_factory(cloud, workdir)

        def _stage(base: str = "healthy", **overrides):
            overrides.setdefault("serving", {"gpu_ms": 5, "cpu_ms": 300})
            return stage(cloud, base, **overrides)

        def _target(**fields):
            fields.setdefault("lock_timeout_s", 5)
            return sandbox_target(**fields)

        for i, case in enumerate(CASES):
            if args.only in case.id:
                service = f"bench-fault-{i}"
                outcome = run_case(case, _stage, _target, cloud.admin, service, build_blocks)
                rows.append(asdict(outcome))
        if not args.no_kill:
            rows += _kill_cases(cloud, _target, build_blocks, args.only)
        if not args.no_webhook and (not args.only or args.only in "webhook:"):
            rows += webhook_cases(workdir / "webhook", api_url)

    figures = {
        "cases": len(rows),
        "passed": sum(r["passed"] for r in rows),
        "invariant_violations": sum(len(r["violations"]) for r in rows),
        "releases_lost": sum(
            not (r["got"] in KNOWN or str(r["got"]).startswith("error"))
            for r in rows
            if not r["id"].startswith("webhook:")  # their tags lost are counted below
        )
        + sum(r.get("lost", 0) for r in rows),
        "duplicate_revisions": sum(len(r["duplicates"]) for r in rows),
        "slots_left_held": sum(bool(r["slot_held"]) for r in rows),
        "records_wrong": sum(len(r.get("records", [])) for r in rows),
        "runs_left_running": sum(len(r.get("left_running", [])) for r in rows),
        "seconds": round(time.perf_counter() - started, 1),
        "results": [
            {
                **{k: r[k] for k in ("id", "expect", "got", "passed", "detail")},
                "records": r.get("records", []),
                "left_running": r.get("left_running", []),
            }
            for r in rows
        ],
    }
    if not args.json:
        for r in rows:
            print(
                f"{'ok ' if r['passed'] else 'FAIL'} {r['id']:45s} {r['got']:12s} {r['detail'][:80]}"
            )
            for problem in [
                *r["violations"],
                *r["duplicates"],
                *r.get("records", []),
                *r.get("left_running", []),
            ]:
                print(f"     {problem}")
    print_figures(figures, args.json, keys=[k for k in figures if k != "results"])
    return 0 if figures["passed"] == figures["cases"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
