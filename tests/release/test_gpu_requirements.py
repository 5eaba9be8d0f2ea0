"""Cloud Run's GPU requirements, from one list (blocks/gpu_regions.py): the ReleaseTarget block
refuses them before any call, naming the field; the sandbox answers a 400 like Google."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2
from pydantic import ValidationError

from shipyard.blocks.gpu_regions import gpu_regions
from shipyard.blocks.release_target import ReleaseTarget
from shipyard.blocks.revision_templates import CpuTemplate, GpuTemplate, RevisionSpec, SecretEnv


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"regions": ["europe-west1", "asia-east1"]}, "regions: 'asia-east1'"),
        ({"gpu_template": RevisionSpec(cpu="2")}, "gpu_template.cpu='2'"),
        ({"gpu_template": RevisionSpec(memory="8Gi")}, "gpu_template.memory='8Gi'"),
        ({"gpu_template": RevisionSpec(cpu_throttling=True)}, "gpu_template.cpu_throttling"),
        # Cloud Run's CPU and memory table (blocks/revision_templates.py, CPU_MEMORY_GIB).
        ({"gpu_template": RevisionSpec(memory="32Gi")}, "gpu_template.cpu='8'"),
        ({"gpu_template": RevisionSpec(cpu="8", memory="40Gi")}, "at most 32Gi"),
        ({"cpu_template": RevisionSpec(gpu=0, memory="20Gi")}, "cpu_template.cpu='6'"),
        ({"cpu_template": RevisionSpec(gpu=0, cpu="4", memory="1Gi")}, "cpu_template.memory='2Gi'"),
        # The tag URL: the longest release tag ('baseline') + the service name <= 46.
        ({"service": "s" * 39}, "at most 38 characters"),
    ],
)
def test_release_target_refuses_what_cloud_run_gpus_refuse(overrides, field):
    with pytest.raises(ValidationError) as err:
        ReleaseTarget(**{"service": "pages", **overrides})
    assert field in str(err.value)
    assert ReleaseTarget(service="pages", regions=list(gpu_regions("nvidia-l4")))
    assert ReleaseTarget(service="s" * 38, gpu_template=RevisionSpec(cpu="8", memory="32Gi"))


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"gpu": 2}, "gpu=2: Cloud Run attaches at most 1 GPU per instance; set gpu=1"),
        ({"env": {"PORT": "9000"}}, "env: PORT: reserved env name(s) that Cloud Run sets"),
        ({"secret_env": {"K_REVISION": {"secret": "s"}}}, "secret_env: K_REVISION: reserved"),
    ],
)
def test_a_template_refuses_what_cloud_run_refuses_naming_the_field(fields, says):
    with pytest.raises(ValidationError) as err:
        GpuTemplate(**fields)
    assert says in str(err.value)
    with pytest.raises(ValidationError, match=r"memory='32Gi' with gpu_template\.cpu='4'"):
        GpuTemplate(cpu="4", memory="32Gi")


def test_the_release_tags_are_the_ones_the_service_name_rule_counts():
    from shipyard.blocks.names import RELEASE_TAGS
    from shipyard.flows.deploy.traffic_split import BASELINE_TAG, CANARY_TAG, PRIOR_TAG

    assert {CANARY_TAG, PRIOR_TAG, BASELINE_TAG} <= set(RELEASE_TAGS)


def test_every_template_field_has_a_title_and_a_description():
    for model in (GpuTemplate, CpuTemplate, SecretEnv):
        for name, info in model.model_fields.items():
            assert info.title and info.description, f"{model.__name__}.{name}"


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
