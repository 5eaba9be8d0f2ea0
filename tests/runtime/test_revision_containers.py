"""Revisions run the built image on the sandbox's Docker daemon, with Cloud Run's contract: the
container answers on $PORT with K_* in its env and its stdout in Cloud Logging; an image that
exits at start never gets traffic (Google's startup message); one that exceeds its memory limit
is killed, logged with Google's OOM text, and its requests get a 503."""

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
from run_testkit import FAILED, FAST, READY, create, parent, template  # noqa: E402

SERVER = (
    "import http.server, os\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        if self.path == '/hog':\n"
    "            hog = bytearray(512 * 1024 * 1024)\n"
    "        body = os.environ['K_REVISION'].encode()\n"
    "        self.send_response(200); self.send_header('content-length', str(len(body)))\n"
    "        self.end_headers(); self.wfile.write(body)\n"
    "print('listening on', os.environ['PORT'], flush=True)\n"
    "http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n"
)


def _image(engine_sandbox, engine_base, tmp_path, name: str, cmd: str) -> str:
    from blocks.cloud import GoogleCloud

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
    engine_sandbox, engine_base, tmp_path
):
    from blocks.cloud import GoogleCloud
    from sandbox.admin import SandboxAdmin

    cloud = GoogleCloud()
    ok = _image(engine_sandbox, engine_base, tmp_path, "ok", '["python3", "/srv/server.py"]')
    svc = create(cloud, "served", template(ok))
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
    engine_sandbox, engine_base, tmp_path
):
    from blocks.cloud import GoogleCloud
    from sandbox.admin import SandboxAdmin

    cloud = GoogleCloud()
    image = _image(engine_sandbox, engine_base, tmp_path, "hog", '["python3", "/srv/server.py"]')
    tpl = template(image)
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
    assert httpx.get(svc.uri + "/", timeout=30).status_code == 503
