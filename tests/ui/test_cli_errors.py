"""The CLI's common mistakes end in one line that names the fix; no traceback without --verbose.

The mistakes of issue 23 run as `shipyard` processes, as a user's shell runs them (what reaches
stderr there is the point: Prefect's console handler, the Cloud Logging handler's closing note),
all at once on the session's Prefect server and sandbox; the cheaper ones (a bad tag, a target
without a project) run in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cli_kit import run_cli

from shipyard.blocks.cloud import ENDPOINT_ENV, PROJECT_ENV, GoogleCloud
from shipyard.blocks.release_target import ReleaseTarget

SHIPYARD = str(Path(sys.executable).with_name("shipyard"))
RUN_S = 300  # one `shipyard` process on a loaded machine (a release flow run included)


def assert_one_line(output: str, *needles: str) -> None:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    assert "Traceback" not in output, output
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("tag", ["!!!", "not a tag!!", "v1.2.3\n", "v１.2.3"])  # noqa: RUF001 - look-alike digits are the input under test
def test_a_bad_tag_is_one_line_naming_the_pattern(monkeypatch, capsys, tag):
    code, output = run_cli(monkeypatch, capsys, "release", tag, "--dry-run")
    assert code == 2
    assert_one_line(output, "TAG", "is not a release tag", "v1.4.0")


def test_no_project_nor_sandbox_says_sandbox_up(monkeypatch, capsys):
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    monkeypatch.delenv(PROJECT_ENV, raising=False)
    name = f"noproject-{uuid.uuid4().hex[:6]}"
    # A cloud block without a project (an empty one is setup's `sandbox` block, or refused at
    # load: tests/ui/test_target_form.py).
    ReleaseTarget(cloud=GoogleCloud()).save(name)
    code, output = run_cli(monkeypatch, capsys, "release", "v1.0.0", "--target", name)
    assert code == 2
    assert_one_line(output, "GoogleCloud.project is not set", "shipyard sandbox up")


def test_verbose_is_accepted(monkeypatch, capsys):
    code, output = run_cli(monkeypatch, capsys, "--verbose", "release", "!!!")
    assert code == 2 and "is not a release tag" in output


# ---------------------------------------------------------------- as a user's shell runs them


def _git_repo_without_tags(root: Path) -> str:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main", str(root)], check=True, timeout=60)
    (root / "README").write_text("no tags here\n")
    subprocess.run([*git, "-C", str(root), "add", "-A"], check=True, timeout=60)
    subprocess.run([*git, "-C", str(root), "commit", "-q", "-m", "one"], check=True, timeout=60)
    return f"file://{root}"


def _closed_port_url() -> str:
    from sandbox.procs import free_port

    return f"http://127.0.0.1:{free_port()}"


# name -> (arguments, environment changes (None: unset), exit code, what the line must name)
Case = tuple[list[str], dict[str, str | None], int, tuple[str, ...]]


@pytest.fixture(scope="module")
def mistakes(sandbox, prefect_server, tmp_path_factory) -> dict[str, tuple[Case, int, str, str]]:
    """Every mistake of issue 23 as its own `shipyard` process, all started at once; per case:
    (the case, exit code, stdout, stderr); under "no api home" the Prefect home those without
    PREFECT_API_URL ran in."""
    from prefect.settings import PREFECT_API_URL

    from sandbox.admin import SandboxAdmin
    from shipyard.blocks.build_settings import BuildSettings

    # The session's sandbox as the last test on this worker left it may inject faults: healthy.
    admin = SandboxAdmin(sandbox.emulator_url)
    admin.reset(scenario="healthy")
    admin.close()
    root = tmp_path_factory.mktemp("cli-errors")
    suffix = uuid.uuid4().hex[:6]
    settings = f"clierr-{suffix}"
    BuildSettings(
        image_repository=f"{sandbox.registry_host}/{settings}/page-service",
        git_url=_git_repo_without_tags(root / "repo"),
        source_dir=".",
    ).save(settings, overwrite=True)
    target = f"clierr-{suffix}"
    ReleaseTarget(
        service=f"clierr-{suffix}",
        regions=["europe-west1"],
        build_settings_block=settings,
        retries=1,
        retry_delay_s=0.05,
        lock_timeout_s=5,
    ).save(target, overwrite=True)
    dead_api = f"{_closed_port_url()}/api"
    fresh_home = root / "fresh-prefect-home"  # a temporary server would put its database here
    fresh_home.mkdir()
    unset: dict[str, str | None] = {"PREFECT_API_URL": None, "PREFECT_HOME": str(fresh_home)}
    not_set = ("PREFECT_API_URL is not set", "prefect server start", "export PREFECT_API_URL=")
    cases: dict[str, Case] = {
        # A tag git does not have: the flow run fails at the tag's check, in the run's log.
        "unknown tag": (
            ["release", "v9.9.9", "--target", target],
            {"PREFECT_LOGGING_LEVEL": "INFO"},  # the run's progress lines, on stdout
            1,
            ("git tag 'v9.9.9' does not exist", "push the tag first"),
        ),
        # The sandbox down: its emulator's address answers nothing.
        "sandbox down": (
            ["release", "v1.0.0", "--target", target],
            {ENDPOINT_ENV: _closed_port_url()},
            2,
            ("does not answer", "connection refused", "shipyard sandbox up"),
        ),
        "prefect down": (
            ["release", "v1.0.0", "--target", target],
            {"PREFECT_API_URL": dead_api},
            2,
            (f"the Prefect API at {dead_api} does not answer", "prefect server start"),
        ),
        "missing block": (
            ["release", "v1.0.0", "--target", f"missing-{suffix}"],
            {},
            2,
            (f"--target 'missing-{suffix}'", "Shipyard Release Target", "create it"),
        ),
        "rollback, no api": (["rollback", target], unset, 2, ("`shipyard rollback`", *not_set)),
        "dry run, no api": (
            ["release", "v1.0.0", "--dry-run", "--target", target],
            unset,
            2,
            ("`shipyard release`", *not_set),
        ),
        "status, no api": (["status", target], unset, 2, ("`shipyard status`", *not_set)),
        "report, no api": (["report"], unset, 2, ("`shipyard report`", *not_set)),
    }
    base = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "COLUMNS": "80"}
    procs = {}
    for name, (args, changes, _, _) in cases.items():
        env = {**base, **{k: v for k, v in changes.items() if v is not None}}
        for key in [k for k, v in changes.items() if v is None]:
            env.pop(key, None)
        procs[name] = subprocess.Popen(
            [SHIPYARD, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=RUN_S)
        results[name] = (cases[name], proc.returncode, out, err)
    results["no api home"] = (cases["report, no api"], 0, "", str(fresh_home))
    return results


@pytest.mark.slow  # eight `shipyard` processes at once (~20 s of CPU, one flow run)
@pytest.mark.parametrize(
    "name",
    [
        "unknown tag",
        "sandbox down",
        "prefect down",
        "missing block",
        "rollback, no api",
        "dry run, no api",
        "status, no api",
        "report, no api",
    ],
)
def test_each_mistake_is_one_stderr_line_naming_the_fix(mistakes, name):
    (_, _, code, needles), returncode, out, err = mistakes[name]
    lines = err.splitlines()
    assert len(lines) == 1, f"{name}: {len(lines)} lines on stderr:\n{err}\nstdout:\n{out}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in err + out, f"{name}:\n{err}\n{out}"
    assert returncode == code, f"{name}: exit {returncode}\n{err}"
    for needle in needles:
        assert needle in lines[0], f"{name}: {needle!r} not in {lines[0]!r}"


@pytest.mark.slow
def test_no_temporary_server_wrote_into_the_prefect_home(mistakes):
    """Without PREFECT_API_URL, Prefect's client would start a temporary server on the Prefect
    home's database (the real server's, on a shared home): the commands refused first."""
    home = Path(mistakes["no api home"][3])
    assert sorted(p.name for p in home.iterdir()) == [], list(home.iterdir())


@pytest.mark.slow
def test_the_unknown_tags_run_log_keeps_the_traceback_the_terminal_did_not_get(mistakes):
    """The run's progress went to stdout, one line per record; its traceback stayed in the
    run's log on the Prefect server (for whoever debugs), not in the terminal."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    _, _, out, _ = mistakes["unknown tag"]
    (view,) = [line for line in out.splitlines() if "View at" in line]
    run_id = view.rsplit("/", 1)[-1].strip()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(run_id)]))
        )
    assert any("Traceback" in log.message for log in logs), [log.message for log in logs]


def test_a_cloud_that_stops_answering_during_a_run_is_named_with_its_fix(monkeypatch):
    """What escapes a release run when Google or the sandbox stops answering mid-run (the
    preflight found it up): requests' error as google-api-core raises it, under the release's."""
    import requests

    from shipyard.deployments.cli.errors import release_failure

    monkeypatch.delenv(ENDPOINT_ENV, raising=False)

    def raised(host: str, port: int) -> Exception:
        refused = requests.ConnectionError(
            f"HTTPConnectionPool(host='{host}', port={port}): Max retries exceeded with url: "
            "/v2/projects/p/locations/europe-west1/services/s (Caused by NewConnectionError("
            "'Failed to establish a new connection: [Errno 111] Connection refused'))"
        )
        try:
            raise RuntimeError("find-release failed") from refused
        except RuntimeError as exc:
            return exc

    sandbox = ReleaseTarget(cloud=GoogleCloud(endpoint="http://127.0.0.1:39999", project="p"))
    line = release_failure(raised("127.0.0.1", 39999), sandbox, "v1.0.0")
    assert line.startswith("release v1.0.0 failed: the sandbox's Google endpoint 127.0.0.1:39999")
    assert "connection refused" in line and "shipyard sandbox up" in line, line
    google = ReleaseTarget(cloud=GoogleCloud(project="p"))
    line = release_failure(raised("run.googleapis.com", 443), google, "v1.0.0")
    assert "run.googleapis.com:443 could not be reached" in line and "check the network" in line
    assert "\n" not in line and "Max retries" not in line, line
