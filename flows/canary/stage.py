"""The canary: a real page, sent to the canary's tag URL, judged before any traffic moves.

Seed 003: three runs of `POST /internal/translate/page` with `X-Internal-Token`, each must
answer 200 with `x-fallback-used: 0`; the GPU must beat the CPU baseline by at least 30%;
and the revision's own logs must not say `Failed to create CUDAExecutionProvider` (the GPU
image that silently ran on CPU), `undefined symbol`, Cloud Run's OOM lines (`Memory limit of
... MiB exceeded`, `Container terminated on signal 9`) or `UnicodeEncodeError`. The response
must decode as an image of the input's size. An OOM answers 503 (transient, retried), so the
log check is what fails a canary whose retry got past an OOM.

The request speaks the service's protocol (CanaryPolicy.body: raw, multipart or JSON) and each
sample (CanaryPolicy.samples: from the released commit, the worker or the block) is judged by
its own expected answer (flows/canary/checks.py); a failed check says what was sent and what
came back, and a failed canary cites the first error lines of the revision's own logs.

The CPU baseline latency comes from the last recorded release (a Prefect Variable per
service); when none is recorded it is measured once on a CPU baseline revision of the region
(tagged `baseline` for the measurement only) and recorded with the release.

A transient answer (503, 429, a dropped connection) is retried with backoff; a 500 is the
application failing and is judged, not retried. Every page request the canary sends is counted,
retries included: `remote_503_rate` is the fraction the service answered 503 (seed 003's figure
of an overloaded or OOM-killed GPU instance), over the canary's page requests to the tag URL
(not the health check, not the CPU baseline's measurement). The token is read from a Prefect Secret
block and only ever placed in the request header.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Literal

from google.cloud import run_v2
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.variables import Variable
from pydantic import BaseModel, SecretStr

from shipyard.blocks.canary_policy import CanaryPolicy
from shipyard.blocks.names import sanitize_name
from shipyard.blocks.release_target import ReleaseTarget, cpu_template_fingerprint
from shipyard.flows.canary.checks import redact
from shipyard.flows.canary.probing import (
    CanaryRun,
    check_health,
    invoker_token,
    load_token,
    probe_runs,
)
from shipyard.flows.canary.samples import Resolved, resolve_samples
from shipyard.flows.canary.verdict import (
    error_lines_reason,
    figures_and_reasons,
    filter_reason,
    run_reasons,
)
from shipyard.flows.deploy.region_deploy import deploy_revision
from shipyard.flows.deploy.templates import cpu_template
from shipyard.flows.deploy.traffic_split import BASELINE_TAG, pinned_traffic
from shipyard.flows.release.context import RunContext
from shipyard.flows.release.steps import StepLog, note_attempt
from shipyard.tasks import cloud_run as cr
from shipyard.tasks.canary_logs import first_error_lines
from shipyard.tasks.cloud_logging import find_revision_entries
from shipyard.tasks.deploy_errors import ConfigurationError
from shipyard.tasks.reports import publish_table

RUN_COLUMNS = [
    "run",
    "sample",
    "status",
    "ms",
    "remote_ms",
    "fallback_used",
    "image",
    "attempts",
    "answered_503",
    "error",
]


BaselineSource = Literal["recorded", "measured", "unavailable", "skipped"]


class CanaryReport(BaseModel):
    passed: bool
    reasons: list[str]
    region: str
    revision: str
    url: str
    runs: list[CanaryRun]
    p50_ms: float | None = None
    p95_ms: float | None = None
    baseline_ms: float | None = None
    baseline_source: BaselineSource = "unavailable"
    speedup: float | None = None
    fallback_used: bool = False
    requests: int = 0  # page requests sent, retries included
    remote_503_rate: float | None = None  # fraction of `requests` answered 503
    log_hits: list[str] = []
    samples: list[str] = []
    # A failed canary's first error lines of the revision's logs, and the query that found them
    # (what a user types in the Logs Explorer).
    error_lines: list[str] = []
    error_log_query: str = ""
    window_start: str = ""
    window_end: str = ""
    judged_at: str = ""


# ---------------------------------------------------------------- release record


def release_variable(scope: str) -> str:
    """Prefect Variable with the last recorded release of a service (JSON), per
    `ReleaseTarget.scope` (the service, or `service-environment`: each environment its own)."""
    return sanitize_name(f"shipyard-release-{scope}", 255)


def recorded_release(scope: str) -> dict[str, Any] | None:
    value = Variable.get(release_variable(scope), default=None)
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------- logs


def revision_log_hits(
    ctx: RunContext,
    steps: StepLog,
    region: str,
    revision: str,
    start: dt.datetime,
    end: dt.datetime,
) -> list[str]:
    """The revision's entries in [start, end) with a signature -> 'signature (severity): line'.

    The read is the task tasks/cloud_logging.find_revision_entries, run as the step
    `canary-logs`: a task run retried by Prefect on transient errors (the target's settings).
    """
    signatures = ctx.target.canary.log_signatures
    if not signatures:
        return []
    matches = steps.run(
        "canary-logs",
        find_revision_entries,
        ctx.cloud,
        service=ctx.target.service,
        revision=revision,
        signatures=signatures,
        start=start,
        end=end,
        region=region,
    )
    hits = []
    for match in matches:
        line = match.text.strip().splitlines()[0][:160] if match.text.strip() else ""
        # The line itself says what happened (the signature is a piece of it): said once,
        # and each distinct line once however many canary runs met it.
        hits.append(f"revision log {match.severity}: {line or match.signature}")
    return list(dict.fromkeys(hits))


# ---------------------------------------------------------------- baseline


def tag_baseline(ctx: RunContext, service: run_v2.Service, revision: str) -> run_v2.Service:
    """`revision` given the `baseline` tag at 0% (the rest of the traffic unchanged): the
    service as Cloud Run wrote it."""
    traffic = [t for t in pinned_traffic(service) if t.tag != BASELINE_TAG]
    traffic.append(cr.Traffic(revision=revision, percent=0, tag=BASELINE_TAG))
    return cr.set_traffic(ctx.services, service, traffic, **ctx.wait)


@task(name="cpu-baseline-url", cache_policy=NO_CACHE, persist_result=False)
def baseline_url_step(ctx: RunContext, region: str) -> tuple[str, str | None]:
    """A URL reaching a Ready CPU revision of the region -> (url, tag to remove after)."""
    note_attempt()
    service = cr.get_service(ctx.services, ctx.service_name(region))
    if service is None:
        raise ConfigurationError(f"no service {ctx.target.service} in {region} to measure")
    cpu_ready = [
        r
        for r in cr.list_revisions(ctx.revisions, service.name)
        if "nvidia.com/gpu" not in (r.containers[0].resources.limits if r.containers else {})
        and cr.ready_state(r)[0] == "succeeded"
    ]
    names = {cr.short_name(r.name) for r in cpu_ready}
    serving = [t for t in pinned_traffic(service) if t.percent > 0]
    if serving and all(t.revision in names for t in serving):
        return service.uri, None  # the service URL reaches only CPU revisions
    if names:
        chosen = ctx.cpu_revision if ctx.cpu_revision in names else sorted(names)[-1]
        service = tag_baseline(ctx, service, chosen)
        return cr.tag_uri(service, BASELINE_TAG) or service.uri, BASELINE_TAG
    deployed = deploy_revision(ctx, region, cpu_template(ctx), BASELINE_TAG)
    return deployed.tag_uri or deployed.service_uri, BASELINE_TAG


@task(name="cpu-baseline-untag", cache_policy=NO_CACHE, persist_result=False)
def untag_step(ctx: RunContext, region: str, tag: str) -> bool:
    """Take `tag` off the region's service (traffic unchanged); True when it was there."""
    note_attempt()
    service = cr.get_service(ctx.services, ctx.service_name(region))
    if service is None or cr.tag_uri(service, tag) is None:
        return False
    traffic = [t for t in pinned_traffic(service) if t.tag != tag]
    cr.set_traffic(ctx.services, service, traffic, **ctx.wait)
    return True


def baseline_still_valid(target: ReleaseTarget, record: dict[str, Any]) -> bool:
    """A recorded CPU baseline counts while it is younger than the policy's limit and was
    measured on the CPU template the target has now (else it is measured again)."""
    if record.get("cpu_template") != cpu_template_fingerprint(target):
        return False
    try:
        measured = dt.datetime.fromisoformat(str(record.get("cpu_baseline_at")))
    except ValueError:
        return False
    age = dt.datetime.now(dt.UTC) - measured
    return age <= dt.timedelta(days=target.canary.baseline_max_age_days)


def baseline_latency(
    ctx: RunContext,
    steps: StepLog,
    region: str,
    sample: Resolved,
    token: SecretStr | None,
) -> tuple[float | None, BaselineSource]:
    """(ms, 'recorded' | 'measured' | 'unavailable' | 'skipped')."""
    if ctx.target.canary.min_speedup is None:
        return None, "skipped"  # no speed-up check: nothing to measure
    record = recorded_release(ctx.target.scope) or {}
    if record.get("cpu_baseline_ms") and baseline_still_valid(ctx.target, record):
        return float(record["cpu_baseline_ms"]), "recorded"
    url, tag = steps.run("cpu-baseline", baseline_url_step, ctx, region)
    bearer = invoker_token(ctx, url)
    try:
        check_health(steps, "cpu-baseline-health", url, ctx.target.canary, bearer)
        runs = probe_runs(
            steps,
            "cpu-baseline-run",
            url,
            [sample],
            ctx.target.canary,
            token,
            bearer,
            1,
        )
    finally:
        if tag:
            steps.run("cpu-baseline-untag", untag_step, ctx, region, tag)
    ok = [r.ms for r in runs if r.status == r.expected_status and r.ms]
    return (min(ok), "measured") if ok else (None, "unavailable")


# ---------------------------------------------------------------- verdict


def remote_503_rate(runs: list[CanaryRun]) -> tuple[int, float | None]:
    """(page requests sent, fraction the service answered 503), retries included."""
    requests = sum(r.attempts for r in runs)
    answered = sum(r.answered_503 for r in runs)
    return requests, (round(answered / requests, 4) if requests else None)


def judge(
    policy: CanaryPolicy,
    runs: list[CanaryRun],
    samples: list[Resolved],
    baseline_ms: float | None,
    log_hits: list[str],
) -> tuple[list[str], dict[str, float | None]]:
    """The reasons a canary fails (none: it passed) and its latency figures."""
    reasons = run_reasons(runs, named=bool(policy.samples))
    more, figures = figures_and_reasons(policy, runs, baseline_ms, samples[0].label)
    reasons += more
    reasons += log_hits
    return reasons, figures


# How far back a failed canary reads its revision's error lines: the revision's start-up
# (before the canary window) is where a missing module or a bad model path shows.
ERROR_LOOKBACK = dt.timedelta(hours=1)


def revision_error_lines(
    ctx: RunContext,
    steps: StepLog,
    region: str,
    revision: str,
    start: dt.datetime,
    end: dt.datetime,
    token: SecretStr | None,
) -> tuple[list[str], int, str]:
    """(first error lines, entries found, the Logging filter a user types) of the revision
    up to `end`."""
    limit = ctx.target.canary.error_log_lines
    if not limit:
        return [], 0, ""
    try:
        found = steps.run(
            "canary-error-logs",
            first_error_lines,
            ctx.cloud,
            service=ctx.target.service,
            revision=revision,
            region=region,
            start=start - ERROR_LOOKBACK,
            end=end,
            limit=limit,
        )
    except Exception as exc:  # noqa: BLE001 - the lines explain a verdict, they never change it
        get_run_logger().warning(
            "the canary of %s failed; its error lines could not be read from Cloud Logging "
            "(%s): see the revision's logs",
            revision,
            type(exc).__name__,
        )
        return [], 0, ""
    secrets = (token.get_secret_value(),) if token is not None else ()
    return [redact(line, secrets) for line in found.lines], found.found, found.where


def run_canary(
    ctx: RunContext,
    steps: StepLog,
    region: str,
    revision: str,
    tag_url: str,
) -> CanaryReport:
    """Send each sample `runs` times to the tag URL, read the revision's logs, judge."""
    policy = ctx.target.canary
    samples = resolve_samples(policy, steps, ctx.target.build_settings_block, ctx.git_tag)
    token = load_token(policy)
    bearer = invoker_token(ctx, tag_url)
    baseline_ms, source = baseline_latency(ctx, steps, region, samples[0], token)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    unhealthy = check_health(steps, "canary-health", tag_url, policy, bearer)
    runs = probe_runs(steps, "canary-run", tag_url, samples, policy, token, bearer, policy.runs)
    end = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    if policy.log_settle_s:
        time.sleep(policy.log_settle_s)  # log ingestion lag on Google; 0 in the sandbox
    hits = revision_log_hits(ctx, steps, region, revision, start, end)
    reasons, figures = judge(policy, runs, samples, baseline_ms, hits)
    if unhealthy:
        reasons.insert(0, unhealthy)
    error_lines: list[str] = []
    query = ""
    if reasons:
        error_lines, found, query = revision_error_lines(
            ctx, steps, region, revision, start, end, token
        )
        why = error_lines_reason(revision, error_lines, found, " ".join(hits))
        if why:
            # The why first (after a failed health check): the ledger and the state message
            # keep only the first few hundred characters of the reasons. The filter, long and
            # the same for every run, last.
            reasons.insert(1 if unhealthy else 0, why)
            reasons.append(filter_reason(query))
    requests, rate_503 = remote_503_rate(runs)
    report = CanaryReport(
        passed=not reasons,
        reasons=reasons,
        region=region,
        revision=revision,
        url=tag_url,
        runs=runs,
        baseline_ms=baseline_ms,
        baseline_source=source,
        fallback_used=any(r.fallback_used not in (None, "0") for r in runs),
        requests=requests,
        remote_503_rate=rate_503,
        log_hits=hits,
        samples=[s.label for s in samples],
        error_lines=error_lines,
        error_log_query=query,
        window_start=start.isoformat(),
        window_end=end.isoformat(),
        judged_at=dt.datetime.now(dt.UTC).isoformat(),
        **figures,
    )
    verdict = "PASSED" if report.passed else "FAILED: " + "; ".join(reasons)
    names = ", ".join(report.samples)
    publish_table(
        [
            r.model_dump(exclude={"headers", "expected_status", "problems", "exchange"})
            for r in runs
        ],
        key=f"canary-{ctx.target.scope}",
        description=(
            f"Canary of {revision} in {region} ({policy.runs} runs of {names}, "
            f"p95 {report.p95_ms} ms, CPU baseline {baseline_ms} ms ({source})): {verdict}"
        ),
        columns=RUN_COLUMNS,
    )
    return report
