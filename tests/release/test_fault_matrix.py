"""The fault matrix in the suite (marked `faults`): a representative case per stage, each
checked for its expected outcome, the invariants over the whole traffic history, duplicate
revisions, a free release slot, the release record and the ledger against the truth, and no
flow run left Running. The SIGKILL cases the bench added for issue 24 run here too (killed
during the cutover's traffic update, after the cutover, and killed with nobody re-running);
bench/faults.py runs every case. And the bench refuses any Prefect server but its own."""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from bench.fault_kills import KILL_CASES, TAG, TAGGED_AT, run_kill_case
from bench.fault_matrix import CASES, run_case

pytestmark = [pytest.mark.slow, pytest.mark.faults]

SUITE = {
    "quota-read:429 burst",
    "quota-polling:never decided",
    "deploy:429 burst",
    "deploy:connection reset at 20%",
    "deploy:502/504 at 20%",
    "deploy:quota refused by the operation",
    "readiness:GPU revision never Ready (fault)",
    "canary:OOM",
    "traffic:rollback under 429 bursts",
    "build:answer to the submission lost",
}


def test_matrix_has_at_least_thirty_cases_over_every_stage():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.stage for c in CASES} >= {
        "quota-read",
        "quota-polling",
        "deploy",
        "readiness",
        "canary",
        "traffic",
        "build",
    }
    assert {c.id for c in CASES} >= SUITE


@pytest.mark.parametrize("case", [c for c in CASES if c.id in SUITE], ids=lambda c: c.id)
def test_fault_case(case, stage, make_target, sandbox_admin, request):
    service = "fm-" + re.sub(r"[^a-z0-9]+", "-", case.id.lower()).strip("-")[:30].rstrip("-")
    build_blocks = None
    if case.build:  # the real build of a tag, from a throwaway git repository
        settings_block, repo = request.getfixturevalue("app_build")
        base = request.getfixturevalue("pinned_base")
        repo.tag("v1.0.0")

        def build_blocks(service: str, timeout_s: float):
            return {"base_image": base, "build_settings_block": settings_block}, None

    outcome = run_case(case, stage, make_target, sandbox_admin, service, build_blocks)
    assert outcome.passed, outcome


KILLS_IN_SUITE = {
    "kill:traffic update",
    "kill:after the cutover",
    "kill:canary, nobody re-runs",
    "kill:build, nobody re-runs",
}


def _service(case_id: str, prefix: str) -> str:
    return prefix + re.sub(r"[^a-z0-9]+", "-", case_id.lower()).strip("-")[:28].rstrip("-")


@pytest.mark.parametrize(
    "case", [c for c in KILL_CASES if c.id in KILLS_IN_SUITE], ids=lambda c: c.id
)
def test_kill_case(case, stage, make_target, sandbox_admin, request):
    """Killed (SIGKILL) at the point, then re-run, or swept when nobody re-runs: the release
    converges, the record and the ledger carry the truth (the image its revision runs, the
    commit, the tag's time, the CPU baseline), no run of it is left Running (the killed run and
    its build subflow end Crashed), no canary tag stays, the slot is free."""
    assert {c.id for c in KILL_CASES} >= KILLS_IN_SUITE
    build_blocks = None
    if case.build:
        settings_block, repo = request.getfixturevalue("app_build")
        base = request.getfixturevalue("pinned_base")
        repo.tag(TAG, at=TAGGED_AT)
        head = subprocess.run(
            ["git", "-C", str(repo.root), "rev-parse", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

        def build_blocks(service: str, timeout_s: float):
            return {"base_image": base, "build_settings_block": settings_block}, head

    outcome = run_kill_case(
        case, stage, make_target, sandbox_admin, _service(case.id, "fk-"), build_blocks
    )
    assert outcome.passed, outcome


ROOT = Path(__file__).resolve().parents[2]


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def _any(self) -> None:
        type(self).seen.append(f"{self.command} {self.path}")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

    def log_message(self, *args) -> None:
        pass


def test_bench_refuses_a_prefect_server_not_its_own(tmp_path):
    """Told to use another Prefect server (PREFECT_API_URL, as README's UI path sets it), the
    bench refuses in one line, exit 2, and sends that server nothing."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api"
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "faults.py"), "--json"],
            env={**os.environ, "PREFECT_API_URL": url},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and url in done.stderr, done.stderr
    assert "PREFECT_API_URL" in done.stderr
    assert _Recorder.seen == []


def test_bench_never_reads_a_profiles_prefect_server(tmp_path):
    """A profile that points at another server (`prefect config set PREFECT_API_URL=...`) is
    not read: the bench's Prefect home and profiles file are its own, before Prefect loads."""
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(
        'active = "ui"\n[profiles.ui]\nPREFECT_API_URL = "http://127.0.0.1:9/api"\n'
    )
    code = (
        "import sys; from pathlib import Path; from bench.faults import isolate_prefect_home; "
        "isolate_prefect_home(Path(sys.argv[1])); "
        "import prefect.settings as ps; print(ps.get_current_settings().api.url)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_PROFILES_PATH"] = str(profiles)
    seen = subprocess.run(
        [
            sys.executable,
            "-c",
            "import prefect.settings as ps; print(ps.get_current_settings().api.url)",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert seen.stdout.strip() == "http://127.0.0.1:9/api"  # the profile is real and read
    isolated = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "bench")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert isolated.returncode == 0, isolated.stderr[-2000:]
    assert isolated.stdout.strip() == "None"
