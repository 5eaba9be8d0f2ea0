"""The per-step GPU quota check against the sandbox's quota scenarios: revisions read from
Cloud Run, the region's quota from Cloud Quotas."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from shipyard.flows.release.context import RunContext
from shipyard.flows.rollout.quota_check import RevisionGpus, gpus_needed, step_fits
from shipyard.tasks.deploy_errors import ConfigurationError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sandbox"))
from run_testkit import FAST, create, short, target, template  # on the path just above

NZR = "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion"


def _revisions(cloud, service: str, region: str, *, cpu: bool) -> str:
    """A service whose first revision (GPU) serves 100 %, with a second GPU revision `-v2`
    (and a CPU one `-cpu`) beside it at 0 %; returns the first one's name."""
    services = cloud.services_client()
    svc = create(cloud, service, template(gpu=True), region)
    first = short(svc.latest_ready_revision)
    extra = [("registry.local/pages:2", True, f"{service}-v2")]
    if cpu:
        extra.append(("registry.local/pages:2", False, f"{service}-cpu"))
    for image, gpu, name in extra:
        current = services.get_service(name=svc.name)
        current.template = template(image, gpu=gpu, revision=name)
        current.traffic = [target(first, 100)]
        services.update_service(service=current).result(polling=FAST)
    return first


def test_a_step_is_checked_against_the_regions_gpu_quota(stage, make_target, cloud):
    stage(
        regions={
            "europe-west1": {"gpu_no_zonal_redundancy": 1},
            "us-central1": {"gpu_no_zonal_redundancy": 2},
        }
    )
    target = make_target()  # zonal redundancy off: the no-zonal-redundancy L4 quota
    ctx = RunContext(target, "v2.0.0", None)
    service = target.service
    tight = _revisions(cloud, service, "europe-west1", cpu=True)
    roomy = _revisions(cloud, service, "us-central1", cpu=False)

    # Quota 1: both GPU revisions side by side need 2.
    short_of = step_fits(ctx, "europe-west1", f"{service}-v2", tight, 50)
    assert (short_of.fits, short_of.needed, short_of.limit) == (False, 2, 1)
    assert short_of.why.startswith(
        f"the 50% step needs 2 L4 GPUs in europe-west1 (new 1 + stable 1), quota 1 ({NZR}): "
    )
    assert "rollout.on_quota_short" in short_of.why
    # The 100% step leaves the stable revision no share: 1 fits.
    last = step_fits(ctx, "europe-west1", f"{service}-v2", tight, 100)
    assert (last.fits, last.needed, last.limit) == (True, 1, 1)
    assert last.why == "the 100% step needs 1 L4 GPU in europe-west1 (new 1 + stable 0), quota 1"
    # A CPU stable revision holds no GPU.
    beside_cpu = step_fits(ctx, "europe-west1", f"{service}-v2", f"{service}-cpu", 10)
    assert (beside_cpu.fits, beside_cpu.needed) == (True, 1)
    none = step_fits(ctx, "europe-west1", f"{service}-cpu", f"{service}-cpu", 10)
    assert (none.fits, none.needed, none.limit) == (True, 0, None) and "needs no GPU" in none.why

    # Quota 2: the same step fits.
    fits = step_fits(ctx, "us-central1", f"{service}-v2", roomy, 50)
    assert (fits.fits, fits.needed, fits.limit) == (True, 2, 2)
    assert fits.why == "the 50% step needs 2 L4 GPUs in us-central1 (new 1 + stable 1), quota 2"

    with pytest.raises(ConfigurationError, match=r"stable revision 'nope' does not exist"):
        step_fits(ctx, "us-central1", f"{service}-v2", "nope", 50)


@pytest.mark.parametrize(
    ("min_instances", "percent", "needed"),
    [
        (0, 10, 1),  # no minimum: still one instance while it has a share
        (1, 50, 1),
        (4, 10, 1),  # ceil(0.4)
        (4, 50, 2),
        (3, 50, 2),  # ceil(1.5)
        (3, 100, 3),
        (3, 0, 0),  # no share: nothing
    ],
)
def test_gpus_needed_scales_the_minimum_by_the_share(min_instances, percent, needed):
    spec = RevisionGpus(gpus=1, accelerator="nvidia-l4", min_instances=min_instances)
    assert gpus_needed(spec, percent) == needed
    assert gpus_needed(RevisionGpus(0, "", min_instances), percent) == 0  # a CPU revision
