"""On the Docker daemon too (issue 22): a revision's faults that show only under load act where the
emulator routes the request, so a container revision's request log carries the 500s and the slow
latencies (sandbox/emulator/load_faults.py); and the service-level minimum instances start the
container of a revision that serves traffic although it was scaled to zero, before the update's
operation is done (what an abort relies on to shift traffic back to a warm stable revision).

The container is the base image with a `command`: nothing to build."""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

import httpx
from google.cloud import run_v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sandbox"))
from run_testkit import FAST, create, short, target, template

# Answers every GET after 30 ms of "work" with its revision's name.
SERVE = [
    "python3",
    "-c",
    "import http.server, os, time\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        time.sleep(0.03); body = os.environ['K_REVISION'].encode()\n"
    "        self.send_response(200); self.send_header('content-length', str(len(body)))\n"
    "        self.end_headers(); self.wfile.write(body)\n"
    "http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n",
]
FACTOR = 3.0


def _running(engine_sandbox, revision: str) -> bool:
    from sandbox.engine.daemon import Engine, docker

    ps = docker(Engine(engine_sandbox.docker_host), "ps", "--format", "{{.Names}}")
    return any(name.startswith(f"rev-{revision}-") for name in ps.stdout.split())


def test_load_faults_and_service_minimums_on_containers(engine_sandbox, engine_base):
    from sandbox.admin import SandboxAdmin
    from shipyard.blocks.cloud import GoogleCloud

    admin = SandboxAdmin(engine_sandbox.emulator_url)
    try:
        admin.reset(
            scenario_data={
                "serving": {"idle_instance_s": 0},
                "revision_faults": [
                    {"fault": "errors_under_load", "accelerator": "any"},
                    {"fault": "slow_under_load", "accelerator": "any", "factor": FACTOR},
                ],
            }
        )
        cloud = GoogleCloud()
        tpl = template(engine_base, revision="underload-a")
        tpl.containers[0].command = SERVE
        svc = create(cloud, "underload", tpl)
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        with httpx.Client(timeout=60) as http:
            statuses = [http.get(svc.uri + "/").status_code for _ in range(50)]
        assert [n for n, s in enumerate(statuses, start=1) if s == 500] == [30, 50]

        project = cloud.resolved_project()
        entries = list(
            cloud.logging_client().list_entries(
                resource_names=[f"projects/{project}"],
                filter_=f'logName="projects/{project}/logs/run.googleapis.com%2Frequests" '
                'AND resource.labels.revision_name="underload-a" '
                f'AND timestamp>="{since.isoformat().replace("+00:00", "Z")}"',
                order_by="timestamp asc",
                page_size=1000,
            )
        )
        logged = [e.http_request["status"] for e in entries]
        assert logged == statuses
        latencies = [float(e.http_request["latency"][:-1]) for e in entries]
        # Past the first 10, every answer that is not a 500 took FACTOR x its 30 ms at least.
        slowed = [
            lat for n, lat in enumerate(latencies, start=1) if n > 10 and logged[n - 1] == 200
        ]
        assert len(slowed) == 38 and min(slowed) >= FACTOR * 0.03
        calls = admin.calls()
        assert (calls["run.load_fault.error"], calls["run.load_fault.slowed"]) == (2, 38)

        # Revision b takes all the traffic: a, idle and at 0 %, is scaled to zero.
        services = cloud.services_client()
        current = services.get_service(name=svc.name)
        current.template.revision = "underload-b"
        current.traffic = [target("underload-b", 100)]
        services.update_service(service=current).result(polling=FAST)
        deadline = time.monotonic() + 60
        while _running(engine_sandbox, "underload-a"):
            assert time.monotonic() < deadline, "revision a was not scaled to zero"
            time.sleep(0.2)

        # An abort's warm-up: a service-level minimum with a's share of the traffic back. The
        # operation is done once the containers run, before any request reached them.
        current = services.get_service(name=svc.name)
        current.scaling = run_v2.ServiceScaling(min_instance_count=1)
        current.traffic = [target("underload-a", 10), target("underload-b", 90)]
        done = services.update_service(service=current).result(polling=FAST)
        # Both serve, both are warm: a (at zero) was started for the minimum; b, idle too, was
        # started again only if its idle timeout had scaled it to zero by then (on a loaded
        # machine it may still run: one start, not two).
        assert _running(engine_sandbox, "underload-a") and _running(engine_sandbox, "underload-b")
        assert admin.calls()["run.min_instance_start"] in (1, 2), admin.calls()
        assert "run.cold_start" not in admin.calls()
        assert done.scaling.min_instance_count == 1
        assert {short(s.revision): s.percent for s in done.traffic_statuses} == {
            "underload-a": 10,
            "underload-b": 90,
        }
    finally:
        admin.close()
