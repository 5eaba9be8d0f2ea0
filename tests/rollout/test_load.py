"""The load generator against a sandbox revision: the canary's requests at a bounded rate, at
most so many in flight, all of them in the request log, nothing left running at exit."""

from __future__ import annotations

import datetime as dt
import sys
import threading
import time
from pathlib import Path

from google.cloud import run_v2

from shipyard.blocks.rollout_policy import LoadGenerator
from shipyard.flows.release.context import RunContext
from shipyard.flows.rollout.load import generate_load
from shipyard.tasks.request_logs import read_requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sandbox"))
from run_testkit import FAST, REGION, parent, short, template  # on the path just above


def _load_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "shipyard-load-generator"]


def test_load_at_a_bounded_rate_reaches_the_request_log(stage, make_target, cloud):
    stage()  # the canary's token in Secret Manager; serving: GPU 5 ms, CPU 300 ms
    target = make_target(regions=[REGION])
    tpl = template()
    tpl.max_instance_request_concurrency = 16
    tpl.scaling.max_instance_count = 1
    # A private service (invoker IAM on): a request without the invoker's ID token gets 403.
    svc = (
        cloud.services_client()
        .create_service(
            parent=parent(cloud, REGION),
            service=run_v2.Service(template=tpl),
            service_id=target.service,
        )
        .result(polling=FAST)
    )
    revision = short(svc.latest_ready_revision)
    ctx = RunContext(target, "v1.0.0", None)

    # 2 s at 20/s on a CPU revision answering in ~300 ms: about 40 requests, all answered.
    since = dt.datetime.now(dt.UTC)
    with generate_load(ctx, svc.uri, LoadGenerator(rate_per_s=20, max_in_flight=16)) as load:
        time.sleep(2.0)  # the load's own duration
    counts = load.counts()
    assert 20 <= counts.sent <= 60, counts
    assert counts.answered == counts.sent and counts.in_flight == 0, counts
    assert counts.by_status == {200: counts.sent} and counts.errors == 0, counts  # no 403
    assert not load.running and not _load_threads()
    frame = read_requests(cloud, ctx.project, target.service, REGION, [revision], since)
    posts = frame[frame["revision"] == revision]
    assert len(posts) == counts.sent  # every request is in Cloud Run's request log
    assert (posts["latency_s"] >= 0.3).all()  # the CPU revision's speed: answered for real

    # At most 2 in flight against 300 ms answers: the rate gives way, the bound holds and is
    # reached; stopping with requests in flight leaves none running.
    with generate_load(ctx, svc.uri, LoadGenerator(rate_per_s=50, max_in_flight=2)) as held:
        time.sleep(1.0)  # the load's own duration
    counts = held.counts()
    assert counts.peak_in_flight == 2, counts
    assert counts.sent == counts.answered + counts.unanswered and counts.in_flight == 0, counts
    assert counts.sent < 50, counts  # 50/s for 1 s unbounded; ~300 ms each at 2 in flight
    assert not held.running and not _load_threads()

    # A disabled generator sends nothing.
    with generate_load(ctx, svc.uri, LoadGenerator(enabled=False)) as off:
        pass
    assert off.counts().sent == 0 and not off.running
