"""Fault matrix bench: every case of bench/fault_matrix.py, plus releases killed with SIGKILL
at several steps and run again, and the webhook cases of bench/webhook_faults.py, on the local
cloud (real Prefect server, sandbox).

JSON (--json): cases, passed, invariant_violations, releases_lost (a case whose release ended in
no known state: neither its expected outcome nor a clear error), duplicate_revisions,
slots_left_held, seconds, and per case: id, expect, got, passed, detail.
Goal (issue 15): all cases passed, 0 violations, 0 lost, 0 duplicates, 0 slots left held.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

KNOWN = {"released", "rolled_back", "cpu_fallback", "error"}
ROOT = Path(__file__).resolve().parent.parent
_GIT = ["git", "-c", "user.email=bench@shipyard.invalid", "-c", "user.name=shipyard bench"]


def build_blocks_factory(cloud, workdir: Path):
    """`build_blocks(service, timeout_s)` for the build cases: a git repository holding
    examples/page-service (made once), a recorded base-image pin, and per service a
    BuildSettings block with its own image repository (so every case builds)."""
    from prefect.variables import Variable

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


def _kill_cases(cloud, make_target, build_blocks) -> list[dict]:
    """Kill the release process at a step, run the release again, check it converged."""
    from prefect.settings import PREFECT_API_URL

    from bench.fault_matrix import IMAGE, duplicate_revisions, slot_held
    from sandbox.release_invariants import all_violations
    from shipyard.deployments.demo.run import stage
    from shipyard.flows.release.flow import run_release

    def canary_tag(admin, service):
        history = admin.traffic_history(service)
        return any(t.get("tag") == "canary" for e in history for t in e["traffic"])

    steps = [
        (
            "kill:quota polling",
            "default",
            {},
            lambda a, s: a.calls().get("quotas.create_preference", 0) >= 1,
        ),
        (
            "kill:deploy",
            "healthy",
            {"operations": {"polls_before_done": 20}},
            lambda a, s: a.calls().get("run.service_created", 0) >= 1,
        ),
        ("kill:canary", "healthy", {"serving": {"gpu_ms": 400, "cpu_ms": 4000}}, canary_tag),
        (
            "kill:build",
            "healthy",
            {"builds": {"queue_ms": 3000, "step_delay_ms": 500}},
            lambda a, s: a.calls().get("build.create", 0) >= 1,
        ),
    ]
    out = []
    for i, (name, base, overrides, ready) in enumerate(steps):
        stage(cloud, base, **overrides)
        service = f"bench-kill-{i}"
        builds = name == "kill:build"  # no image: the release builds, and is killed meanwhile
        extra, commit = build_blocks(service, 600) if builds else ({}, None)
        image = None if builds else f"{IMAGE}:v1.0.0"
        target = make_target(service=service, lock_timeout_s=1, **extra)
        target.save(f"bench-kill-{i}", overwrite=True)
        code = textwrap.dedent(
            f"""
            from shipyard.flows.release.flow import release
            release("v1.0.0", "bench-kill-{i}", image={image!r}, commit={commit!r})
            """
        )
        env = dict(os.environ, PREFECT_API_URL=str(PREFECT_API_URL.value()))
        child = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while (
            time.monotonic() < deadline and child.poll() is None and not ready(cloud.admin, service)
        ):
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        prefs_before = cloud.admin.calls().get("quotas.create_preference", 0)
        try:
            result = run_release("v1.0.0", target, image=image or "", commit=commit or "")
            got, results = result.outcome, [result]
        except Exception as exc:  # noqa: BLE001 - any failure is this case's outcome, recorded
            got, results = f"error: {exc}"[:200], []
        history = cloud.admin.traffic_history(service)
        violations = all_violations(history, results)
        duplicates = duplicate_revisions(history, cloud.admin.calls())
        if base == "default" and cloud.admin.calls().get("quotas.create_preference", 0) > 2:
            duplicates.append("a quota preference filed twice")
        if builds and cloud.admin.calls().get("build.create", 0) != 1:
            duplicates.append(f"{cloud.admin.calls().get('build.create', 0)} builds, not 1")
        held = slot_held(service)
        passed = got == "released" and not violations and not duplicates and not held
        out.append(
            {
                "id": name,
                "expect": "released",
                "got": got,
                "passed": passed,
                "violations": violations,
                "duplicates": duplicates,
                "slot_held": held,
                "detail": f"preferences filed before the re-run: {prefs_before}",
            }
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-kill", action="store_true", help="skip the SIGKILL cases")
    parser.add_argument("--no-webhook", action="store_true", help="skip the webhook cases")
    parser.add_argument("--only", default="", help="run the cases whose id contains this")
    args = parser.parse_args()
    logging.getLogger("prefect").setLevel(logging.CRITICAL)

    from bench.fault_matrix import CASES, run_case
    from bench.figures import print_figures
    from bench.webhook_faults import webhook_cases
    from shipyard.deployments.demo.run import local_cloud, prefect_api, sandbox_target, stage

    started = time.perf_counter()
    rows: list[dict] = []
    workdir = Path(tempfile.mkdtemp(prefix="shipyard-bench-faults-"))
    with prefect_api(startup_timeout=300) as api_url, local_cloud(startup_timeout=180) as cloud:
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
        if not args.no_kill and (not args.only or args.only in "kill:"):
            rows += _kill_cases(cloud, _target, build_blocks)
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
        "seconds": round(time.perf_counter() - started, 1),
        "results": [{k: r[k] for k in ("id", "expect", "got", "passed", "detail")} for r in rows],
    }
    if not args.json:
        for r in rows:
            print(
                f"{'ok ' if r['passed'] else 'FAIL'} {r['id']:45s} {r['got']:12s} {r['detail'][:80]}"
            )
    print_figures(figures, args.json, keys=[k for k in figures if k != "results"])
    return 0 if figures["passed"] == figures["cases"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
