"""The Cloud Run job a release runs in: what prefect-gcp's `cloud-run-v2` worker would submit for
a run of a deployment with prefect.yaml's `cloud_run_job_variables`, rendered the way the worker
renders it, and checked against what a release needs.

The path is the worker's own, against the session's Prefect server (no Cloud Run call): a work
pool created with `CloudRunWorkerV2.get_default_base_job_template()` (what `prefect work-pool
create --type cloud-run-v2` stores) whose `credentials` default is a reference to a
GcpCredentials block (what the UI's pool form stores when a block is picked), a deployment of the release flow with those job variables
(the server validates them against the pool's variables schema, as `prefect deploy` does), a
flow run of it, and `CloudRunWorkerJobV2Configuration.resolve_for_flow_run` (the worker's step
before it creates the job: the pool's template filled with the variables by
prefect.utilities.templating's `apply_values`, the credentials block reference resolved, then
`prepare_for_flow_run`). The checks read the rendered Cloud Run Admin v2 Job body.

The same checks on the pool's defaults (only image, region and credentials given, as README's
first Cloud Run snippet had it) must fail: a 600 s job timeout would kill a release after ten
minutes, 512 MiB is below what a release's two processes take, and no service account means the
default Compute Engine one.

That a release waiting at an approval gate holds no job is proven elsewhere:
tests/rollout/test_gate.py (a deployment run suspends at the gate: its state is `Suspended` with
the gate's pause key, and once answered the run is run again from the start, its body twice: the
waiting process had ended) and tests/rollout/test_progressive_resumed.py (the same on a real
release, resumed where it stopped).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]

# What a release's job holds in memory besides its imports (measured, not guessed): a process
# that ran three sandbox releases with bench/timed_release.py (deploy, quota polls, canary,
# cutover) peaked at 220 MiB RSS (resource.getrusage) against 189 MiB right after importing the
# release flow: 31 MiB of working set. The imports are measured live below.
RELEASE_WORKING_SET_MIB = 31
# Twice the measured need: Cloud Run counts files written to the (in-memory) filesystem against
# the limit (the executor's `prefect-flow-run-*` workspace, anything a step writes to /tmp), and
# a real release holds longer Cloud Build logs and larger request-log frames than the sandbox's.
# Source: https://cloud.google.com/run/docs/configuring/jobs/memory-limits ("Writing files to
# the filesystem" counts towards the available memory; an instance past its limit is terminated).
MEMORY_HEADROOM = 2.0
# The release's undo hook (abort_cleanup: cancel the tag's build, take canary tags off) runs after
# the flow's timeout_seconds, in the same job, after the container's start-up: the job must
# outlive the flow's timeout by at least this much.
UNDO_MARGIN_S = 120
# Cloud Run jobs: task timeout at most 168 h (7 days); at least 1 vCPU for a job; the vCPU a
# memory limit requires (more than 4 GiB: 2, more than 8 GiB: 4, 16: 6, 24: 8).
# Sources: https://docs.cloud.google.com/run/docs/configuring/task-timeout,
# https://docs.cloud.google.com/run/docs/configuring/jobs/cpu ("You must set a minimum of 1 CPU
# for a Cloud Run job"), https://cloud.google.com/run/docs/configuring/jobs/memory-limits.
MAX_TASK_TIMEOUT_S = 7 * 24 * 3600
MIN_CPU_FOR_MEMORY_GIB = ((24, 8.0), (16, 6.0), (8, 4.0), (4, 2.0))

# The job's two processes: the container runs `prefect flow-run execute` (the executor), which
# starts the engine process that runs the release (prefect/cli/flow_run.py `execute`). Measured
# in a fresh interpreter: the executor's imports, then the engine's (the release flow, and scipy,
# which a rollout step's judge imports when it judges: flows/rollout/judge.py).
# Measured with the bytecode already compiled, as in the worker image (uv --compile-bytecode,
# deployments/worker/Dockerfile): a first import in a fresh venv also compiles every module and
# peaks at ~550 MiB (seen on a fresh CI venv), which is not what a job's run costs. The
# interpreter compiles (and writes) the .pyc files first, then measures in a second process.
_COMPILE = "import prefect.cli.flow_run, shipyard.flows.release.flow, scipy.stats"
_MEASURE = """
import json, resource
def mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
import prefect.cli.flow_run
executor = mib()
import shipyard.flows.release.flow
import scipy.stats
print(json.dumps({"executor": executor, "engine": mib()}))
"""


def _job_variables() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return dict(data["definitions"]["cloud_run_job_variables"])


def _throwaway_service_account() -> dict[str, str]:
    """A service-account key of no project (GcpCredentials parses it; nothing calls Google)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": "shipyard-job-template",
        "private_key_id": uuid.uuid4().hex,
        "private_key": pem,
        "client_email": "prefect-worker@shipyard-job-template.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


async def _render(
    cases: dict[str, dict[str, Any]], credentials_id: uuid.UUID
) -> dict[str, dict[str, Any]]:
    """The Cloud Run Job body the worker would create for one flow run of a release deployment
    per case (its job variables), on one cloud-run-v2 pool holding the credentials block."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect_gcp.workers.cloud_run_v2 import (
        CloudRunWorkerJobV2Configuration,
        CloudRunWorkerV2,
    )

    from shipyard.flows.release.flow import release

    tag = uuid.uuid4().hex[:8]
    template = CloudRunWorkerV2.get_default_base_job_template()
    template["variables"]["properties"]["credentials"]["default"] = {
        "$ref": {"block_document_id": str(credentials_id)}
    }
    bodies: dict[str, dict[str, Any]] = {}
    async with get_client() as client:
        pool = await client.create_work_pool(
            WorkPoolCreate(
                name=f"shipyard-cloud-run-{tag}",
                type=CloudRunWorkerV2.type,
                base_job_template=template,
            )
        )
        flow_id = await client.create_flow(release)
        try:
            for case, values in cases.items():
                deployment_id = await client.create_deployment(
                    flow_id=flow_id,
                    name=f"release-{case}-{tag}",
                    work_pool_name=pool.name,
                    entrypoint="shipyard.flows.release.flow.release",
                    job_variables=values,
                )
                deployment = await client.read_deployment(deployment_id)
                run = await client.create_flow_run_from_deployment(
                    deployment_id, parameters={"git_tag": "v1.0.0", "target": "default"}
                )
                try:
                    config = await CloudRunWorkerJobV2Configuration.resolve_for_flow_run(
                        run,
                        client=client,
                        work_pool=pool,
                        worker_name="job-template-test",
                        deployment=deployment,
                    )
                finally:
                    await client.delete_flow_run(run.id)
                    await client.delete_deployment(deployment_id)
                assert config.credentials.project == "shipyard-job-template"  # block resolved
                bodies[case] = config.job_body
        finally:
            await client.delete_work_pool(pool.name)
            await client.delete_block_document(credentials_id)
    return bodies


def _mib(quantity: str) -> float:
    """A Kubernetes memory quantity as Cloud Run takes it ("2Gi", "512Mi", "2G", "512M")."""
    match = re.fullmatch(r"(\d+)(Gi|Mi|G|M)", quantity)
    assert match, f"memory {quantity!r}: not a quantity Cloud Run takes"
    number, unit = int(match.group(1)), match.group(2)
    return number * {"Gi": 1024, "Mi": 1, "G": 1e9 / 2**20, "M": 1e6 / 2**20}[unit]


def _vcpu(quantity: str) -> float:
    """A CPU quantity ("2000m", "2", "1.5") in vCPU."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _problems(body: dict[str, Any], release_timeout_s: float, need_mib: float) -> list[str]:
    """What is wrong with a rendered Job for running a release; [] when nothing is."""
    template = body["template"]["template"]
    container = template["containers"][0]
    limits = container["resources"]["limits"]
    problems = []

    timeout_s = int(str(template["timeout"]).removesuffix("s"))
    if timeout_s < release_timeout_s + UNDO_MARGIN_S:
        problems.append(
            f"timeout {timeout_s} s: the release runs up to {release_timeout_s:g} s plus its undo "
            f"hook ({UNDO_MARGIN_S} s at least); Cloud Run would kill it first"
        )
    if timeout_s > MAX_TASK_TIMEOUT_S:
        problems.append(f"timeout {timeout_s} s: Cloud Run takes at most {MAX_TASK_TIMEOUT_S} s")

    memory = _mib(str(limits["memory"]))
    if memory < need_mib * MEMORY_HEADROOM:
        problems.append(
            f"memory {limits['memory']}: a release's job needs {need_mib:.0f} MiB (measured), "
            f"{MEMORY_HEADROOM:g}x that with headroom"
        )
    cpu = _vcpu(str(limits["cpu"]))
    if cpu < 1:
        problems.append(f"cpu {limits['cpu']}: a Cloud Run job takes at least 1 vCPU")
    for above_gib, min_cpu in MIN_CPU_FOR_MEMORY_GIB:
        if memory > above_gib * 1024 and cpu < min_cpu:
            problems.append(f"cpu {limits['cpu']}: memory above {above_gib} GiB needs {min_cpu:g}")
            break

    account = template.get("serviceAccount") or ""
    if not re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]@[\w-]+\.iam\.gserviceaccount\.com", account):
        problems.append(
            f"serviceAccount {account!r}: not a user-managed service account (without one the "
            "job runs as the default Compute Engine service account)"
        )
    if template.get("maxRetries") != 0:
        problems.append(
            f"maxRetries {template.get('maxRetries')!r}: a crashed release must not be started "
            "again by Cloud Run (Prefect and the next release decide)"
        )
    return problems


def test_the_cloud_run_job_of_a_release_outlives_it_and_fits_it(prefect_server):
    from prefect_gcp import GcpCredentials

    from shipyard.flows.release.flow import release

    # The executor and engine imports, measured meanwhile in a fresh interpreter.
    measuring = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"{_COMPILE}\nimport subprocess, sys\n"
            f"subprocess.run([sys.executable, '-c', {_MEASURE!r}], check=True, timeout=110)",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The worker's credentials, which the pool refers to.
        credentials_id = GcpCredentials(
            service_account_info=_throwaway_service_account(),
            project="shipyard-job-template",
        ).save(f"cloud-run-pool-{uuid.uuid4().hex[:8]}")
        ours = _job_variables()
        pool_defaults = {k: ours[k] for k in ("image", "region")}
        bodies = asyncio.run(_render({"ours": ours, "defaults": pool_defaults}, credentials_id))
        out, err = measuring.communicate(timeout=120)
    finally:
        if measuring.poll() is None:
            measuring.kill()
            measuring.wait(timeout=10)
    assert measuring.returncode == 0, err[-2000:]
    measured = json.loads(out)
    need_mib = measured["executor"] + measured["engine"] + RELEASE_WORKING_SET_MIB
    assert 100 < measured["engine"] < 2048, measured  # a real figure, not a unit slip

    # No block placeholder among the deployment's job variables: `prefect deploy` would copy the
    # block's data, secrets included, into the deployment (prefect/cli/deploy/_core.py resolves
    # them with prefect.utilities.templating.resolve_block_document_references).
    assert not [k for k, v in ours.items() if "prefect.blocks." in str(v)], ours

    release_timeout_s = release.timeout_seconds
    assert release_timeout_s is not None and release_timeout_s >= 3600

    body = bodies["ours"]
    template = body["template"]["template"]
    container = template["containers"][0]
    assert container["image"] == ours["image"]
    assert container["command"] == ["prefect", "flow-run", "execute"]
    assert template["timeout"] == f"{ours['timeout']}s"
    assert _problems(body, release_timeout_s, need_mib) == [], (measured, need_mib)

    # The pool's defaults fail on each count that matters (so the checks above can fail).
    failed = "\n".join(_problems(bodies["defaults"], release_timeout_s, need_mib))
    assert bodies["defaults"]["template"]["template"]["timeout"] == "600s"
    assert "timeout 600 s" in failed
    assert "memory 512Mi" in failed
    assert "serviceAccount ''" in failed
