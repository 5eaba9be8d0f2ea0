"""Cloud Run and Cloud Build refuse what Google refuses, through the official clients, as an HTTP
400 with Google's text (the sources are beside the emulator's rules: sandbox/emulator/
run_limits.py, run_templates.check_gpu_template, build_request.py): CPU with memory, reserved
env names, more than one GPU, a tag too long beside its service's name (or too short), a build
tag of the wrong form. Each was accepted (and went Ready) before."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2
from google.cloud.devtools import cloudbuild_v1
from run_testkit import FAST, parent, target, template


def _limits(tpl: run_v2.RevisionTemplate, **limits: str) -> run_v2.RevisionTemplate:
    tpl.containers[0].resources.limits.update(limits)
    return tpl


def _create(cloud, service_id: str, tpl: run_v2.RevisionTemplate, region: str = "us-central1"):
    return cloud.services_client().create_service(
        parent=parent(cloud, region),
        service=run_v2.Service(template=tpl, invoker_iam_disabled=True),
        service_id=service_id,
    )


def test_cloud_run_refuses_templates_as_google_does(sandbox_admin, cloud):
    sandbox_admin.reset(scenario_data={})
    before = sandbox_admin.calls()
    # 1. CPU and memory: more than 16Gi needs 6 CPU, 24Gi 8, 32Gi at most; 4 CPU need 2Gi.
    with pytest.raises(
        gexc.BadRequest,
        match=r"limits\.memory: Invalid value specified for memory\. For 4\.0 CPU, memory must "
        r"be between 2Gi and 16Gi inclusive\.",
    ):
        _create(cloud, "gpu-wide", _limits(template(gpu=True), memory="32Gi"))
    with pytest.raises(gexc.BadRequest, match=r"For 8\.0 CPU, memory must be between 4Gi and 32Gi"):
        _create(cloud, "too-much", _limits(template(), cpu="8", memory="40Gi"))
    with pytest.raises(gexc.BadRequest, match=r"For 4\.0 CPU, memory must be between 2Gi"):
        _create(cloud, "too-little", _limits(template(), cpu="4", memory="1Gi"))
    # 3. Reserved env names.
    with pytest.raises(
        gexc.BadRequest,
        match=r"containers\[0\]\.env: The following reserved env names were provided: PORT, "
        r"K_SERVICE\. These values are automatically set by the system\.",
    ):
        _create(cloud, "own-port", template(env={"PORT": "9000", "K_SERVICE": "x", "A": "1"}))
    # 4. Two GPUs: a 400 on the template, before any quota is counted.
    with pytest.raises(gexc.BadRequest, match=r"nvidia\.com/gpu: .*at most 1 GPU"):
        _create(cloud, "two-gpus", _limits(template(gpu=True), **{"nvidia.com/gpu": "2"}))
    after = sandbox_admin.calls()
    assert after.get("run.quota_exceeded", 0) == before.get("run.quota_exceeded", 0)
    assert after.get("run.revision_created", 0) == before.get("run.revision_created", 0)
    # What the tables allow still goes Ready: 8 CPU with 32Gi.
    wide = _create(cloud, "wide", _limits(template(), cpu="8", memory="32Gi"))
    assert wide.result(polling=FAST).uri


def test_a_tag_too_long_beside_its_service_name_is_refused(sandbox_admin, cloud):
    """2. The tag URL's label: tag + service name at most 46 characters; a tag of 3 at least."""
    sandbox_admin.reset(scenario_data={})
    services = cloud.services_client()
    name = "s" * 40  # + "canary" = 46: the most Google allows
    svc = _create(cloud, name, template(), region="europe-west1").result(polling=FAST)
    revision = svc.latest_ready_revision.rsplit("/", 1)[-1]

    def tag(value: str, service: run_v2.Service):
        service.traffic = [target(revision, 100, value)]
        return services.update_service(service=service).result(polling=FAST)

    tagged = tag("canary", svc)
    assert [t.tag for t in tagged.traffic_statuses] == ["canary"]
    longer = _create(cloud, name + "s", template(), region="europe-west1").result(polling=FAST)
    revision = longer.latest_ready_revision.rsplit("/", 1)[-1]
    with pytest.raises(
        gexc.BadRequest,
        match=rf"spec\.traffic\.tag: traffic tag 'canary' and service name '{name}s' together "
        r"are too long\. Combined traffic tag and service name cannot exceed 46 characters\.",
    ):
        tag("canary", longer)
    with pytest.raises(gexc.BadRequest, match=r"traffic tag 'v1' is too short"):
        tag("v1", longer)


def test_cloud_build_refuses_a_build_tag_of_the_wrong_form(sandbox_admin, cloud):
    """5. Cloud Build tags match ^[\\w][\\w.-]{0,127}$ (Go's ASCII \\w)."""
    sandbox_admin.reset(scenario_data={})
    builds = cloud.builds_client()
    build = cloudbuild_v1.Build(
        source=cloudbuild_v1.Source(
            git_source=cloudbuild_v1.GitSource(url="https://git.example/x.git", revision="main")
        ),
        steps=[cloudbuild_v1.BuildStep(name="gcr.io/cloud-builders/docker", args=["version"])],
    )
    for bad in ("ccm/v32.2.0", "-rc1", "é"):
        build.tags = ["shipyard-release", bad]
        with pytest.raises(gexc.BadRequest) as err:
            builds.create_build(project_id=cloud.resolved_project(), build=build, timeout=30)
        assert f'invalid build: invalid build tag "{bad}": must match format ' in str(err.value)
        assert r'"^[\w][\w.-]{0,127}$"' in str(err.value)
    assert not list(builds.list_builds(project_id=cloud.resolved_project(), timeout=30))


def test_our_build_request_refuses_such_a_tag_before_any_call():
    """5, our side: flows/build/cloud_build_request.py makes a git tag a Cloud Build tag ('/'
    becomes '_') and refuses what still would not match, naming the field, value and fix."""
    from shipyard.flows.build.cloud_build_request import BuildTagError, build_tag

    assert build_tag("release/v1.2") == "release_v1.2"
    for bad in ("-rc1", ".hidden", ""):
        with pytest.raises(BuildTagError, match=rf"build_tags: '{bad}' cannot be .* Fix: "):
            build_tag(bad)
