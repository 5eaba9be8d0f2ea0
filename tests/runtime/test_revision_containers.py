"""Revisions run the built image on the sandbox's Docker daemon, with Cloud Run's contract: the
container answers on $PORT with K_* in its env and its stdout in Cloud Logging; an image that
exits at start never gets traffic (Google's startup message); one that exceeds its memory limit
is killed, logged with Google's OOM text, its requests get a 503, and the next request starts a
new instance. Scaling as Cloud Run
scales: an idle revision's container stops (unless it has a minimum instance) and the next
request starts it again; a request beyond max instances x concurrency gets Google's 429."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from engine_kit import GitRepo, cloud_build
from google.api_core import exceptions
from google.cloud import run_v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sandbox"))
from run_testkit import FAILED, FAST, READY, create, parent, template

SERVER = (
    "import http.server, os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"  # as Cloud Run asks of a container
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        if self.path == '/hog':\n"
    "            hog = bytearray(512 * 1024 * 1024)\n"
    "        if self.path == '/slow':\n"
    "            print('slow request begun', flush=True); time.sleep(4)\n"
    "        body = os.environ['K_REVISION'].encode()\n"
    "        self.send_response(200); self.send_header('content-length', str(len(body)))\n"
    "        self.end_headers(); self.wfile.write(body)\n"
    "print('listening on', os.environ['PORT'], flush=True)\n"
    "http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n"
)


SERVE = '["python3", "/srv/server.py"]'


@pytest.fixture(scope="module")
def server_image(engine_session, engine_base, tmp_path_factory) -> str:
    """The image of SERVER, built once for the module."""
    with engine_session.env_applied():
        return _image(engine_session, engine_base, tmp_path_factory.mktemp("server"), "ok", SERVE)


def _image(engine_sandbox, engine_base, tmp_path, name: str, cmd: str) -> str:
    from shipyard.blocks.cloud import GoogleCloud

    repo = GitRepo(
        tmp_path / name,
        {
            "server.py": SERVER,
            "Dockerfile": f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nCOPY server.py /srv/\nCMD {cmd}\n",
        },
    )
    tag = f"{engine_sandbox.registry_host}/runtime/{name}:{uuid.uuid4().hex[:8]}"
    build, _log = cloud_build(GoogleCloud(), repo, engine_base, tag)
    assert build.status.name == "SUCCESS", build.status_detail
    return f"{tag.rsplit(':', 1)[0]}@{build.results.images[0].digest}"


def _lines(admin, service: str, log: str) -> list[str]:
    return [
        e.get("textPayload", "")
        for e in admin.logs()
        if e.get("resource", {}).get("labels", {}).get("service_name") == service
        and e.get("logName", "").endswith(log)
    ]


def test_the_image_serves_a_healthy_revision_and_a_crashing_one_gets_no_traffic(
    engine_sandbox, engine_base, server_image, tmp_path
):
    from sandbox.admin import SandboxAdmin
    from shipyard.blocks.cloud import GoogleCloud

    cloud = GoogleCloud()
    svc = create(cloud, "served", template(server_image))
    assert svc.terminal_condition.state == READY
    answer = httpx.get(svc.uri + "/", timeout=30)
    assert answer.status_code == 200 and answer.text.startswith("served-")  # K_REVISION
    admin = SandboxAdmin(engine_sandbox.emulator_url)
    try:
        assert any("listening on" in t for t in _lines(admin, "served", "stdout"))
    finally:
        admin.close()

    crash = _image(engine_sandbox, engine_base, tmp_path, "crash", '["python3", "-c", "exit(1)"]')
    op = cloud.services_client().create_service(
        parent=parent(cloud), service={"template": template(crash)}, service_id="crashing"
    )
    with pytest.raises(exceptions.FailedPrecondition, match="is not ready"):
        op.result(polling=FAST)
    dead = cloud.services_client().get_service(name=f"{parent(cloud)}/services/crashing")
    assert dead.terminal_condition.state == FAILED
    revision = cloud.revisions_client().get_revision(name=dead.latest_created_revision)
    assert any("failed to start and listen on the port" in c.message for c in revision.conditions)


def test_an_instance_over_its_memory_limit_is_killed_with_googles_text(
    engine_sandbox, server_image
):
    from sandbox.admin import SandboxAdmin
    from shipyard.blocks.cloud import GoogleCloud

    cloud = GoogleCloud()
    tpl = template(server_image)
    tpl.containers[0].resources = run_v2.ResourceRequirements(
        limits={"cpu": "1", "memory": "128Mi"}
    )
    svc = create(cloud, "hungry", tpl)
    assert httpx.get(svc.uri + "/", timeout=30).status_code == 200
    assert httpx.get(svc.uri + "/hog", timeout=60).status_code == 503
    admin = SandboxAdmin(engine_sandbox.emulator_url)
    try:
        deadline = time.monotonic() + 30
        system = _lines(admin, "hungry", "varlog%2Fsystem")
        while len(system) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            system = _lines(admin, "hungry", "varlog%2Fsystem")
    finally:
        admin.close()
    assert system[0].startswith("Memory limit of 128 MiB exceeded with 128 MiB used.")
    assert system[1] == "Container terminated on signal 9."
    # As Google: the killed instance is replaced, the next request cold-starts a new one.
    again = httpx.get(svc.uri + "/", timeout=60)
    assert again.status_code == 200 and again.text.startswith("hungry-")


def _containers(engine_sandbox) -> list[str]:
    """The names of the running containers (docker ps on the sandbox's daemon): a revision's
    are `rev-<revision>-…`, one being shut down `stopping-…`."""
    from sandbox.engine.daemon import Engine, docker

    ps = docker(Engine(engine_sandbox.docker_host), "ps", "--format", "{{.Names}}")
    return ps.stdout.split()


def _running(engine_sandbox, revision: str) -> bool:
    return any(name.startswith(f"rev-{revision}-") for name in _containers(engine_sandbox))


def _wait(condition, what: str, timeout_s: float = 60.0, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {timeout_s:.0f} s"
        time.sleep(poll_s)


def test_an_idle_revision_scales_to_zero_and_its_next_request_starts_it_again(
    engine_sandbox, server_image
):
    from concurrent.futures import ThreadPoolExecutor

    from sandbox.admin import SandboxAdmin
    from shipyard.blocks.cloud import GoogleCloud

    admin = SandboxAdmin(engine_sandbox.emulator_url)
    try:
        admin.reset(scenario_data={"serving": {"idle_instance_s": 0}})
        cloud = GoogleCloud()
        warm_tpl = template(server_image)
        warm_tpl.scaling.min_instance_count = 1
        warm = create(cloud, "warm", warm_tpl)
        idle = create(cloud, "idle", template(server_image))
        warm_rev = warm.latest_ready_revision.rsplit("/", 1)[-1]
        idle_rev = idle.latest_ready_revision.rsplit("/", 1)[-1]
        assert _running(engine_sandbox, idle_rev) and _running(engine_sandbox, warm_rev)

        _wait(lambda: not _running(engine_sandbox, idle_rev), "scaled to zero")
        _wait(
            lambda: not any(n.startswith("stopping-") for n in _containers(engine_sandbox)),
            "shut down",
        )
        # Idle as long (created first), but it has a minimum instance: kept.
        assert _running(engine_sandbox, warm_rev)

        with ThreadPoolExecutor(1) as pool:  # a cold start, then the request
            request = pool.submit(httpx.get, idle.uri + "/", timeout=120)
            # The emulator answers while the container starts (the start is off its event loop):
            # the cold start is counted, its container not yet (2: warm's and idle's first).
            seen: list[dict] = []
            _wait(
                lambda: seen.append(admin.calls()) or seen[-1].get("run.cold_start") == 1,
                "cold-starting",
                60,
                poll_s=0.02,
            )
            assert seen[-1]["run.container_started"] == 2
            answer = request.result()
        assert answer.status_code == 200 and answer.text == idle_rev
        assert _running(engine_sandbox, idle_rev)
        assert admin.calls()["run.container_started"] == 3
        _wait(lambda: len(_lines(admin, "idle", "stdout")) == 2, "started twice", 30)
        assert all(line.startswith("listening on") for line in _lines(admin, "idle", "stdout"))
    finally:
        admin.close()


def test_a_request_beyond_max_instances_times_concurrency_gets_googles_429(
    engine_sandbox, server_image
):
    """Max 1 instance, concurrency 1 (the pipeline's GPU revision): while one request runs,
    another waits the pending window (short here), then gets 429 with Google's text."""
    from concurrent.futures import ThreadPoolExecutor

    from sandbox.admin import SandboxAdmin
    from shipyard.blocks.cloud import GoogleCloud

    admin = SandboxAdmin(engine_sandbox.emulator_url)
    try:
        admin.reset(scenario_data={"serving": {"idle_instance_s": 60, "request_pending_s": 0.5}})
        svc = create(GoogleCloud(), "busy", template(server_image))
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(httpx.get, svc.uri + "/slow", timeout=60)
            _wait(
                lambda: any("slow request begun" in t for t in _lines(admin, "busy", "stdout")),
                "in flight",
                30,
            )
            refused = httpx.get(svc.uri + "/", timeout=30)
            assert slow.result().status_code == 200
        text = "The request was aborted because there was no available instance."
        assert refused.status_code == 429 and refused.text.startswith(text)
        assert httpx.get(svc.uri + "/", timeout=30).status_code == 200  # room again
        requests_log = [
            e
            for e in admin.logs()
            if e.get("resource", {}).get("labels", {}).get("service_name") == "busy"
            and e.get("logName", "").endswith("%2Frequests")
        ]
        assert [e["httpRequest"]["status"] for e in requests_log] == [429, 200, 200]
        assert requests_log[0]["textPayload"].startswith(text)
    finally:
        admin.close()
