"""Helpers for the Cloud Run emulator tests: templates, fast LRO polling, a sample page."""

from __future__ import annotations

import io

from google.api_core.future.polling import DEFAULT_POLLING
from google.cloud import run_v2
from PIL import Image, ImageDraw

# google-api-core polls LROs from 1 s upward by default: poll fast, give up after 30 s.
FAST = DEFAULT_POLLING.with_delay(initial=0.05, maximum=0.2, multiplier=1.5).with_timeout(30)
REGION = "europe-west1"
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
READY = run_v2.Condition.State.CONDITION_SUCCEEDED
FAILED = run_v2.Condition.State.CONDITION_FAILED
RECONCILING = run_v2.Condition.State.CONDITION_RECONCILING


def template(
    image: str = "registry.local/pages:1",
    *,
    gpu: bool = False,
    revision: str = "",
    env: dict[str, str] | None = None,
) -> run_v2.RevisionTemplate:
    """The seed-003 GPU spec (L4, 4 CPU, 16Gi, concurrency 1) or a small CPU baseline."""
    limits = {"cpu": "4", "memory": "16Gi"} if gpu else {"cpu": "2", "memory": "4Gi"}
    if gpu:
        limits["nvidia.com/gpu"] = "1"
    container = run_v2.Container(
        image=image,
        env=[run_v2.EnvVar(name=k, value=v) for k, v in (env or {}).items()],
        resources=run_v2.ResourceRequirements(limits=limits, cpu_idle=False),
    )
    tpl = run_v2.RevisionTemplate(
        revision=revision,
        containers=[container],
        scaling=run_v2.RevisionScaling(max_instance_count=1),
        max_instance_request_concurrency=1,
        timeout="900s",
    )
    if gpu:
        tpl.node_selector = run_v2.NodeSelector(accelerator="nvidia-l4")
        tpl.gpu_zonal_redundancy_disabled = True
    return tpl


def parent(cloud, region: str = REGION) -> str:
    return f"projects/{cloud.resolved_project()}/locations/{region}"


def create(cloud, service_id: str, tpl: run_v2.RevisionTemplate, region: str = REGION):
    """Create a public service (invoker IAM off: these tests read its pages without an ID
    token) and wait for its operation; returns the Service."""
    op = cloud.services_client().create_service(
        parent=parent(cloud, region),
        service=run_v2.Service(template=tpl, invoker_iam_disabled=True),
        service_id=service_id,
    )
    return op.result(polling=FAST)


def target(revision: str = "", percent: int = 0, tag: str = "") -> run_v2.TrafficTarget:
    kind = REVISION if revision else LATEST
    return run_v2.TrafficTarget(type_=kind, revision=revision, percent=percent, tag=tag)


def short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def page_png(size: tuple[int, int] = (120, 80)) -> bytes:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((10, 10), "page 1", fill=(40, 40, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
