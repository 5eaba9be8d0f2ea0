"""The answer check of a CPU revision before the GPU hand-over gives it users (issue 21).

With a GPU quota of 1 the serving GPU revision's traffic goes to a CPU revision while the GPU
canary runs (flows/deploy/gpu_handover.py). Last good means tested: a CPU revision that never
passed anything must not get users on trust. So it is first sent the canary policy's samples
through its `baseline` tag URL (0% traffic, a URL of its own) and judged by the policy's answer
checks: status, required headers, content type, JSON / text / image checks of every sample. Not
the p95 limit nor the speed-up: a CPU revision is slow by design (seed 003: 444 s a page on CPU
against 28 s on GPU), so each sample is sent once, not `runs` times.

A pass is written to the release record (its `checked` map: revision -> the git tag whose
release checked it) when it happens, before traffic moves: a run killed during the canary
still leaves the CPU revision known as tested, and `good_because` (flows/deploy/traffic.py) and
`last_good` (flows/release/record.py) count it as tested from then on.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from shipyard.flows.canary.probing import check_health, invoker_token, load_token, probe_runs
from shipyard.flows.canary.samples import resolve_samples
from shipyard.flows.canary.stage import (
    recorded_release,
    release_variable,
    tag_baseline,
    untag_step,
)
from shipyard.flows.canary.verdict import run_reasons
from shipyard.flows.deploy.traffic_split import BASELINE_TAG
from shipyard.flows.observe.variables import set_variable
from shipyard.flows.release.context import RunContext
from shipyard.flows.release.steps import StepLog, note_attempt
from shipyard.tasks import cloud_run as cr
from shipyard.tasks.deploy_errors import ConfigurationError

CHECKED_KEY = "checked"  # the release record's map: CPU revision -> git tag that checked it
_KEEP = 20


@dataclass(frozen=True)
class CpuCheck:
    """How a CPU revision answered the policy's samples: no reasons = it passed."""

    revision: str
    url: str
    samples: list[str]
    reasons: list[str]

    @property
    def passed(self) -> bool:
        return not self.reasons

    def said(self) -> str:
        """One line for the release's decisions."""
        what = f"{len(self.samples)} sample{'s' if len(self.samples) != 1 else ''}"
        if self.passed:
            return (
                f"{self.revision} passed the canary's answer checks ({what} through its "
                f"`{BASELINE_TAG}` tag URL; speed not judged on CPU)"
            )
        return (
            f"{self.revision} failed the canary's answer checks ({what} through its "
            f"`{BASELINE_TAG}` tag URL): {'; '.join(self.reasons)}"
        )


@task(name="cpu-baseline-check-tag", cache_policy=NO_CACHE, persist_result=False)
def tag_step(ctx: RunContext, region: str, revision: str) -> str:
    """Give `revision` the `baseline` tag (0%, traffic unchanged) -> its tag URL."""
    note_attempt()
    service = cr.get_service(ctx.services, ctx.service_name(region))
    if service is None:
        raise ConfigurationError(f"no service {ctx.target.service} in {region} to check")
    url = cr.tag_uri(tag_baseline(ctx, service, revision), BASELINE_TAG)
    if not url:
        raise ConfigurationError(
            f"Cloud Run published no `{BASELINE_TAG}` tag URL for {revision} in {region}"
        )
    return url


def check_cpu_revision(ctx: RunContext, steps: StepLog, region: str, revision: str) -> CpuCheck:
    """Send each of the policy's samples once to `revision` through its `baseline` tag URL
    (health first) and judge the answers; the tag is removed again whatever happens."""
    policy = ctx.target.canary
    samples = resolve_samples(policy, steps, ctx.target.build_settings_block, ctx.git_tag)
    token = load_token(policy)
    url = steps.run("cpu-baseline-check", tag_step, ctx, region, revision)
    try:
        bearer = invoker_token(ctx, url)
        unhealthy = check_health(steps, "cpu-baseline-check-health", url, policy, bearer)
        runs = probe_runs(steps, "cpu-baseline-check-run", url, samples, policy, token, bearer, 1)
    finally:
        steps.run("cpu-baseline-check-untag", untag_step, ctx, region, BASELINE_TAG)
    reasons = run_reasons(runs, named=len(samples) > 1)
    if unhealthy:
        reasons.insert(0, unhealthy)
    check = CpuCheck(revision, url, [s.label for s in samples], reasons)
    if check.passed:
        record_checked(ctx.target.scope, revision, ctx.git_tag)
    return check


def record_checked(scope: str, revision: str, git_tag: str) -> None:
    """The release record (of `scope`: ReleaseTarget.scope) says `revision` passed its answer
    check (the release of `git_tag` checked it); the last 20 are kept."""
    record = recorded_release(scope) or {}
    checked = dict(record.get(CHECKED_KEY) or {})
    checked.pop(revision, None)
    checked[revision] = git_tag
    record[CHECKED_KEY] = dict(list(checked.items())[-_KEEP:])
    set_variable(release_variable(scope), record)


def checked_revisions(record: dict[str, object]) -> dict[str, str]:
    """CPU revision -> the git tag whose release checked it, from a release record."""
    checked = record.get(CHECKED_KEY)
    return {str(k): str(v) for k, v in checked.items()} if isinstance(checked, dict) else {}
