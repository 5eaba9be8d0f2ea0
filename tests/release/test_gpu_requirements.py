"""Cloud Run's GPU requirements, from one list (blocks/gpu_regions.py): the ReleaseTarget block
refuses them before any call, naming the field; the sandbox answers a 400 like Google."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2
from pydantic import ValidationError

from shipyard.blocks.gpu_regions import gpu_regions
from shipyard.blocks.release_target import ReleaseTarget
from shipyard.blocks.revision_templates import RevisionSpec


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"regions": ["europe-west1", "asia-east1"]}, "regions: 'asia-east1'"),
        ({"gpu_template": RevisionSpec(cpu="2")}, "gpu_template.cpu='2'"),
        ({"gpu_template": RevisionSpec(memory="8Gi")}, "gpu_template.memory='8Gi'"),
        ({"gpu_template": RevisionSpec(cpu_throttling=True)}, "gpu_template.cpu_throttling"),
    ],
)
def test_release_target_refuses_what_cloud_run_gpus_refuse(overrides, field):
    with pytest.raises(ValidationError) as err:
        ReleaseTarget(service="pages", **overrides)
    assert field in str(err.value)
    assert ReleaseTarget(service="pages", regions=list(gpu_regions("nvidia-l4")))


def _gpu_template(cpu: str = "4", memory: str = "16Gi") -> run_v2.RevisionTemplate:
    return run_v2.RevisionTemplate(
        containers=[
            run_v2.Container(
                image="registry.local/pages:1",
                resources=run_v2.ResourceRequirements(
                    limits={"cpu": cpu, "memory": memory, "nvidia.com/gpu": "1"}, cpu_idle=False
                ),
            )
        ],
        node_selector=run_v2.NodeSelector(accelerator="nvidia-l4"),
        gpu_zonal_redundancy_disabled=True,
    )


def test_the_sandbox_refuses_a_gpu_template_like_google(sandbox_admin, cloud):
    sandbox_admin.reset(scenario_data={})
    services = cloud.services_client()
    project = cloud.resolved_project()

    def create(region: str, template: run_v2.RevisionTemplate, service_id: str):
        return services.create_service(
            parent=f"projects/{project}/locations/{region}",
            service=run_v2.Service(template=template),
            service_id=service_id,
        )

    with pytest.raises(
        gexc.BadRequest, match="'nvidia-l4' is not supported in region 'asia-east1'"
    ):
        create("asia-east1", _gpu_template(), "gpu-nowhere")
    with pytest.raises(gexc.BadRequest, match=r"limits\.cpu.*at least 4 CPU"):
        create("us-central1", _gpu_template(cpu="2"), "gpu-small")
    with pytest.raises(gexc.BadRequest, match=r"limits\.memory.*at least 16Gi"):
        create("us-central1", _gpu_template(memory="8Gi"), "gpu-tight")
    assert create("us-east4", _gpu_template(), "gpu-fits").result(timeout=30).uri
