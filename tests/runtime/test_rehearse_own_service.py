"""A team's own inference service, from `shipyard init` to a released revision on the sandbox's
real containers, then broken four ways (issue 21, "Done when").

The service (examples/digit-service) is written the way inference services are, not in
Shipyard's shape: Flask behind gunicorn, `POST /guess` with a multipart `image`, `{"digit": N,
"score": P}` back from an ONNX model on onnxruntime, listening on $PORT, with a Dockerfile of its
own. It is copied into a git repository of its own and released with nothing changed in it, every
step a `shipyard` command in a subprocess, the way README's "Rehearse your own service" has a
user type them (bench/rehearse.py holds the repository, the commands and the breakages; the
bench times the same path on a fresh sandbox).

Then four commits break it, as teams do, each released under its own tag:
- a dependency missing (scipy imported, not in requirements.txt): the container dies at start;
  the release rolls back and its reason quotes the `ModuleNotFoundError` line of the revision's
  own log;
- a handler answering 500 on the sample: rolled back, the reason says what was sent and that
  500 came back;
- a wrong JSON answer (200, but not digit 7): rolled back, the reason shows the field, what was
  expected and what came back;
- a start that takes longer than the wait the old code gave a revision, but inside the startup
  probe: it must release.

One module, on the session's engine sandbox (its registry, daemon and base image: the tiers of
this service are its own), one Prefect server (the session's). Cost: the python tier's pip
install (onnxruntime, numpy, pillow, flask) once, then code-only builds.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from setup_blocks_kit import setup_blocks_kept

from bench.rehearse import (
    EXPECTED_DIGIT,
    INIT_ARGS,
    SLOW_START_S,
    SLOW_START_TARGET,
    Cli,
    ServiceRepo,
    handler_500,
    missing_dependency,
    sandbox_env,
    set_slow_start_target,
    slow_start,
    wrong_answer,
)

# The module's first test pays for init, the first prewarm (pip) and the first release.
pytestmark = pytest.mark.timeout(1500)

REGION = "europe-west1"


@dataclass
class Rehearsal:
    repo: ServiceRepo
    cli: Cli
    service: str
    first: dict[str, Any]
    init_output: str


@pytest.fixture(scope="module")
def rehearsal(
    engine_session, engine_upstream, tmp_path_factory, prefect_server
) -> Iterator[Rehearsal]:
    """`shipyard init` in the service's repository, prewarm, v1.0.0 released: the last good
    revision the breakages fall back to."""
    from prefect.settings import get_current_settings

    from sandbox.admin import SandboxAdmin
    from sandbox.manager import save_info

    work = tmp_path_factory.mktemp("own-service")
    home = work / "home"
    save_info(engine_session, home)  # what `shipyard sandbox up` leaves for init to find
    env = sandbox_env(home)
    env.update(engine_session.env())  # the two exports `sandbox up` prints
    env["PREFECT_API_URL"] = str(get_current_settings().api.url)  # the session's server
    env["PREFECT_HOME"] = os.environ["PREFECT_HOME"]
    admin = SandboxAdmin(engine_session.emulator_url)
    try:
        admin.reset(scenario="healthy")
    finally:
        admin.close()
    repo = ServiceRepo(work / "digit-service")
    cli = Cli(env, repo.root)
    # init rewrites setup's blocks on this worker's server: they are put back afterwards.
    with setup_blocks_kept():
        init = cli.run("init", *INIT_ARGS)
        prewarm = cli.json("prewarm")
        assert [(t["tier"], t["action"]) for t in prewarm["tiers"]] == [
            ("base", "built"),
            ("python", "built"),
        ], prewarm
        repo.tag("v1.0.0")
        first = cli.release("v1.0.0")
        yield Rehearsal(repo, cli, "digit-service", first, init.stdout)


def _service_path() -> str:
    from shipyard.blocks.cloud import GoogleCloud

    return f"projects/{GoogleCloud().resolved_project()}/locations/{REGION}/services/digit-service"


def _serving(engine_session) -> dict[str, int]:
    """revision short name -> percent, as the service reports what it serves."""
    from shipyard.blocks.cloud import GoogleCloud

    with engine_session.env_applied():
        service = GoogleCloud().services_client().get_service(name=_service_path())
    return {s.revision.rsplit("/", 1)[-1]: s.percent for s in service.traffic_statuses if s.percent}


def _revision_lines(engine_session, revision: str, wait_for: str) -> list[str]:
    """The revision's log lines in the sandbox's Cloud Logging (its container's own output)."""
    from sandbox.admin import SandboxAdmin

    admin = SandboxAdmin(engine_session.emulator_url)
    deadline = time.monotonic() + 30
    try:
        while True:
            lines = [
                str(e.get("textPayload") or e.get("jsonPayload", {}).get("message", ""))
                for e in admin.logs()
                if e.get("resource", {}).get("labels", {}).get("revision_name") == revision
            ]
            if any(wait_for in line for line in lines) or time.monotonic() > deadline:
                return lines
            time.sleep(0.2)
    finally:
        admin.close()


def test_the_service_goes_from_init_to_a_released_revision_whose_canary_checked_its_json(
    rehearsal, engine_session
):
    from shipyard.blocks.release_target import ReleaseTarget
    from shipyard.deployments.demo.sandbox_setup import TARGET_BLOCK

    out = rehearsal.init_output
    assert "checked" in out and "tiers base, python" in out, out  # its own Dockerfile, kept
    assert "wrote" not in out, out
    assert rehearsal.repo.git("status", "--porcelain") == ""  # init changed none of its files
    first = rehearsal.first
    assert first["outcome"] == "released", first["reasons"]
    assert first["build"] and not first["build"]["reused"]
    assert first["build"]["run_steps"] >= 1  # the code layers were built
    assert first["canary"]["passed"] and first["canary"]["runs"] >= 1
    assert _serving(engine_session) == {first["revision"]: 100}
    # The canary init wrote: the sample as multipart `image`, a JSON answer with digit 7.
    with engine_session.env_applied():
        canary = ReleaseTarget.load(TARGET_BLOCK).canary
    assert canary.path == "/guess" and canary.body.kind == "multipart"
    assert canary.body.field == "image"
    assert canary.expected_content_type == "application/json"
    assert canary.json_equals == {"digit": EXPECTED_DIGIT}
    # The container itself answered the canary's sample with 7 (its own log line).
    lines = _revision_lines(engine_session, first["revision"], "guess 7")
    assert any("model digits.onnx loaded" in line for line in lines), lines
    assert any(f"guess {EXPECTED_DIGIT} " in line and "seven.png" in line for line in lines)


def _release_broken(rehearsal: Rehearsal, change, tag: str, message: str) -> dict[str, Any]:
    rehearsal.repo.change_app(change, message)
    rehearsal.repo.tag(tag)
    return rehearsal.cli.release(tag)


def _rolled_back(result: dict[str, Any], rehearsal: Rehearsal, engine_session) -> str:
    good = rehearsal.first["revision"]
    assert result["outcome"] == "rolled_back", result["reasons"]
    assert result["build"] and not result["build"]["reused"]  # the broken code was built
    assert _serving(engine_session) == {good: 100}
    return " ".join(result["reasons"])


def test_a_missing_dependency_rolls_back_quoting_the_module_not_found_line(
    rehearsal, engine_session
):
    result = _release_broken(rehearsal, missing_dependency, "v1.0.1", "centre the digit (scipy)")
    reasons = _rolled_back(result, rehearsal, engine_session)
    assert "ModuleNotFoundError: No module named 'scipy'" in reasons, reasons


def test_a_handler_answering_500_on_the_sample_rolls_back_saying_what_came_back(
    rehearsal, engine_session
):
    result = _release_broken(rehearsal, handler_500, "v1.0.2", "28x28 input")
    reasons = _rolled_back(result, rehearsal, engine_session)
    assert "got 500" in reasons and "expected 200" in reasons, reasons
    assert "POST /guess multipart/form-data (field image: seven.png image/png" in reasons, reasons
    # The revision's own error lines: onnxruntime refusing the 28x28 input.
    assert "Got invalid dimensions for input" in reasons, reasons


def test_a_wrong_json_answer_rolls_back_showing_what_was_sent_and_received(
    rehearsal, engine_session
):
    result = _release_broken(rehearsal, wrong_answer, "v1.0.3", "simpler pixels()")
    reasons = _rolled_back(result, rehearsal, engine_session)
    assert f"JSON digit = 0, expected {EXPECTED_DIGIT}" in reasons, reasons
    assert "sent POST /guess multipart/form-data (field image: seven.png" in reasons, reasons
    assert "got 200 application/json" in reasons and '{"digit":0' in reasons, reasons


# The old code's only wait for a new revision, `ready_timeout_s` (60 s then), scaled down to
# OLD_WAIT_S, a probe well above it, and a start between the two (bench/rehearse.py says more).
OLD_WAIT_S = SLOW_START_TARGET["ready_timeout_s"]
PROBE_S = SLOW_START_TARGET["startup_probe_s"]
assert OLD_WAIT_S < SLOW_START_S < PROBE_S


def test_a_start_slower_than_the_old_wait_but_inside_the_probe_releases(rehearsal, engine_session):
    from shipyard.blocks.cloud import GoogleCloud

    set_slow_start_target(rehearsal.cli.env)  # what a user edits in the target's form
    result = _release_broken(rehearsal, slow_start(SLOW_START_S), "v1.0.4", "warm the model up")
    assert result["outcome"] == "released", result["reasons"]
    assert _serving(engine_session) == {result["revision"]: 100}
    # It really took longer than the old wait: the container said it listened SLOW_START_S after
    # the revision was made (the emulator's Ready condition keeps the creation time as its
    # lastTransitionTime, so the service's own log line tells).
    with engine_session.env_applied():
        revision = (
            GoogleCloud()
            .revisions_client()
            .get_revision(name=f"{_service_path()}/revisions/{result['revision']}")
        )
    listening = _log_time(engine_session, result["revision"], "Listening at: http://0.0.0.0:")
    took = (listening - revision.create_time).total_seconds()
    assert took > OLD_WAIT_S, took


def _log_time(engine_session, revision: str, text: str) -> dt.datetime:
    """When the revision's container first logged a line holding `text`."""
    from sandbox.admin import SandboxAdmin

    admin = SandboxAdmin(engine_session.emulator_url)
    try:
        stamps = [
            e["timestamp"]
            for e in admin.logs()
            if e.get("resource", {}).get("labels", {}).get("revision_name") == revision
            and text in str(e.get("textPayload", ""))
        ]
    finally:
        admin.close()
    assert stamps, f"{revision} never logged {text!r}"
    return dt.datetime.fromisoformat(min(stamps).replace("Z", "+00:00"))
