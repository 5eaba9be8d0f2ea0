"""Fault matrix bench: every case of sandbox/fault_matrix.py, plus releases killed with SIGKILL
at several steps and run again, on the local cloud (real Prefect server, sandbox).

JSON (--json): cases, passed, invariant_violations, releases_lost (a case whose release ended in
no known state: neither its expected outcome nor a clear error), duplicate_revisions,
slots_left_held, seconds, and per case: id, expect, got, passed, detail.
Goal (issue 15): all cases passed, 0 violations, 0 lost, 0 duplicates, 0 slots left held.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KNOWN = {"released", "rolled_back", "cpu_fallback", "error"}


def _kill_cases(cloud, make_target) -> list[dict]:
    """Kill the release process at a step, run the release again, check it converged."""
    from prefect.settings import PREFECT_API_URL

    from deployments.release_demo import stage
    from flows.release import run_release
    from sandbox.fault_matrix import IMAGE, _slot_held, duplicate_revisions
    from sandbox.release_invariants import all_violations

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
    ]
    out = []
    for i, (name, base, overrides, ready) in enumerate(steps):
        stage(cloud, base, **overrides)
        service = f"bench-kill-{i}"
        target = make_target(service=service, lock_timeout_s=1)
        target.save(f"bench-kill-{i}", overwrite=True)
        code = textwrap.dedent(
            f"""
            from flows.release import release
            release("v1.0.0", "bench-kill-{i}", image="{IMAGE}:v1.0.0")
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
            result = run_release("v1.0.0", target, image=f"{IMAGE}:v1.0.0")
            got, results = result.outcome, [result]
        except Exception as exc:  # noqa: BLE001
            got, results = f"error: {exc}"[:200], []
        history = cloud.admin.traffic_history(service)
        violations = all_violations(history, results)
        duplicates = duplicate_revisions(history, cloud.admin.calls())
        if base == "default" and cloud.admin.calls().get("quotas.create_preference", 0) > 2:
            duplicates.append("a quota preference filed twice")
        held = _slot_held(service)
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
    args = parser.parse_args()
    logging.getLogger("prefect").setLevel(logging.CRITICAL)

    from deployments.release_demo import local_cloud, prefect_api, sandbox_target, stage
    from sandbox.fault_matrix import CASES, run_case

    started = time.perf_counter()
    rows: list[dict] = []
    with prefect_api(startup_timeout=300), local_cloud(startup_timeout=180) as cloud:

        def _stage(base: str = "healthy", **overrides):
            overrides.setdefault("serving", {"gpu_ms": 5, "cpu_ms": 300})
            return stage(cloud, base, **overrides)

        def _target(**fields):
            fields.setdefault("lock_timeout_s", 5)
            return sandbox_target(**fields)

        for i, case in enumerate(CASES):
            rows.append(asdict(run_case(case, _stage, _target, cloud.admin, f"bench-fault-{i}")))
        if not args.no_kill:
            rows += _kill_cases(cloud, _target)

    figures = {
        "cases": len(rows),
        "passed": sum(r["passed"] for r in rows),
        "invariant_violations": sum(len(r["violations"]) for r in rows),
        "releases_lost": sum(
            not (r["got"] in KNOWN or str(r["got"]).startswith("error")) for r in rows
        ),
        "duplicate_revisions": sum(len(r["duplicates"]) for r in rows),
        "slots_left_held": sum(bool(r["slot_held"]) for r in rows),
        "seconds": round(time.perf_counter() - started, 1),
        "results": [{k: r[k] for k in ("id", "expect", "got", "passed", "detail")} for r in rows],
    }
    if args.json:
        print(json.dumps(figures))
    else:
        for r in rows:
            print(
                f"{'ok ' if r['passed'] else 'FAIL'} {r['id']:45s} {r['got']:12s} {r['detail'][:80]}"
            )
        for key in (
            "cases",
            "passed",
            "invariant_violations",
            "releases_lost",
            "duplicate_revisions",
            "slots_left_held",
            "seconds",
        ):
            print(f"{key:22s} {figures[key]}")
    return 0 if figures["passed"] == figures["cases"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
