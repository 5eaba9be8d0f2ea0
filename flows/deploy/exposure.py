"""May the release go ahead, given who can call the service? A release step.

A service whose invoker IAM check was turned off (anyone on the internet can call it) is left
so by every later update: a release would keep it public. Unless the target says the service is
meant to be public (`ReleaseTarget.public`), the release is refused before it changes anything,
as a recorded step of the release (its stage events, the ledger and the summary say why).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from shipyard.flows.release.context import RunContext
from shipyard.flows.release.steps import note_attempt
from shipyard.tasks import cloud_run as cr
from shipyard.tasks.deploy_errors import ConfigurationError


@task(name="check-exposure", cache_policy=NO_CACHE, persist_result=False)
def check_exposure_step(ctx: RunContext) -> str:
    """Raise ConfigurationError when a region's service is public and the target is not;
    else say what was checked. A read: transient answers are retried by the step."""
    note_attempt()
    target = ctx.target
    if target.public:
        return "the target is public"
    for region in target.regions:
        service = cr.get_service(ctx.services, ctx.service_name(region))
        if service is not None and service.invoker_iam_disabled:
            raise ConfigurationError(
                f"service {target.service} in {region} has invoker IAM disabled (anyone on the "
                "internet can call it), and ReleaseTarget.public is False: a release would keep "
                "it public. Re-enable invoker IAM on the service, or set public=True on the "
                "target if the service is meant to be public"
            )
    return "invoker IAM on in " + ", ".join(target.regions)
