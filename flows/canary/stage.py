"""The canary: a real page, sent to the canary's tag URL, judged before any traffic moves.

Seed 003: three runs of `POST /internal/translate/page` with `X-Internal-Token`, each must
answer 200 with `x-fallback-used: 0`; the GPU must beat the CPU baseline by at least 30%;
and the revision's own logs must not say `Failed to create CUDAExecutionProvider` (the GPU
image that silently ran on CPU), `undefined symbol`, Cloud Run's OOM lines (`Memory limit of
... MiB exceeded`, `Container terminated on signal 9`) or `UnicodeEncodeError`. The response
must decode as an image of the input's size. An OOM answers 503 (transient, retried), so the
log check is what fails a canary whose retry got past an OOM.

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

import contextvars
import datetime as dt
import time
from typing import Any, Literal, cast

import httpx
import pandas as pd
from prefect import task
from prefect.blocks.system import Secret
from prefect.cache_policies import NO_CACHE
from prefect.variables import Variable
from pydantic import BaseModel, SecretStr

from shipyard.blocks.canary_policy import CanaryPolicy
from shipyard.blocks.names import sanitize_name
from shipyard.blocks.release_target import ReleaseTarget, cpu_template_fingerprint
from shipyard.flows.deploy.region_deploy import deploy_revision
from shipyard.flows.deploy.templates import cpu_template
from shipyard.flows.deploy.traffic_split import BASELINE_TAG, pinned_traffic
from shipyard.flows.observe.progress import Progress
from shipyard.flows.release.context import RunContext
from shipyard.flows.release.steps import StepLog, note_attempt
from shipyard.tasks import cloud_run as cr
from shipyard.tasks.canary_probe import ProbeResult, SampleImage, health, load_sample, probe
from shipyard.tasks.cloud_logging import find_revision_entries
from shipyard.tasks.deploy_errors import ConfigurationError
from shipyard.tasks.errors import TransientError
from shipyard.tasks.reports import publish_table

RUN_COLUMNS = [
    "run",
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


class CanaryRun(BaseModel):
    run: int
    status: int | None = None
    ms: float | None = None
    remote_ms: float | None = None
    fallback_used: str | None = None
    image: str = ""
    attempts: int = 1
    answered_503: int = 0  # of the run's attempts (requests), how many the service answered 503
    error: str | None = None
    headers: dict[str, str] = {}


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
    window_start: str = ""
    window_end: str = ""
    judged_at: str = ""


class TransientAnswer(TransientError):
    """A retryable answer; carries the probe (never the request headers)."""

    def __init__(self, result: ProbeResult):
        super().__init__(f"{result.url}: {result.status or result.error}")
        self.result = result


# ---------------------------------------------------------------- release record


def release_variable(service: str) -> str:
    """Prefect Variable with the last recorded release of a service (JSON)."""
    return sanitize_name(f"shipyard-release-{service}", 255)


def recorded_release(service: str) -> dict[str, Any] | None:
    value = Variable.get(release_variable(service), default=None)
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------- probing

# The statuses of the current canary run's attempts (each retry is a request of its own): the
# step task appends, `_probe_runs` reads. A context variable of the flow's thread; Prefect runs
# the task's attempts in that context (or a copy of it, which shares the list).
_ANSWERS: contextvars.ContextVar[list[int | None] | None] = contextvars.ContextVar(
    "shipyard_canary_answers", default=None
)


def load_token(policy: CanaryPolicy) -> SecretStr | None:
    if not policy.token_secret:
        return None
    try:
        value = cast("Secret[str]", Secret.load(policy.token_secret)).get()
    except ValueError as exc:
        raise ConfigurationError(
            f"CanaryPolicy.token_secret={policy.token_secret!r}: no Prefect Secret block of that "
            "name could be loaded; create it (prefect.blocks.system.Secret(value=...).save(name)) "
            "or set token_secret=None for a service without an internal token"
        ) from exc
    return SecretStr(str(value))


def _headers(policy: CanaryPolicy, token: SecretStr | None, bearer: str | None) -> dict[str, str]:
    headers = {}
    if token is not None:
        headers[policy.auth_header] = token.get_secret_value()
    if bearer:
        headers["authorization"] = f"Bearer {bearer}"
    return headers


def invoker_token(ctx: RunContext, audience: str) -> str | None:
    """An ID token for a private Cloud Run URL, from the target's `GoogleCloud` block (the same
    credentials as every client); None for a public service."""
    if ctx.target.public:
        return None
    return ctx.cloud.id_token(audience)


@task(name="canary-request", cache_policy=NO_CACHE, persist_result=False)
def request_step(
    url: str,
    sample: SampleImage,
    policy: CanaryPolicy,
    token: SecretStr | None,
    bearer: str | None,
) -> ProbeResult:
    note_attempt()
    with httpx.Client(follow_redirects=False) as client:
        result = probe(
            client,
            url.rstrip("/") + policy.path,
            sample,
            method=policy.method,
            headers=_headers(policy, token, bearer),
            timeout=policy.request_timeout_s,
            decode_image=policy.check_image,
            keep_headers=[h.lower() for h in policy.required_headers],
        )
    answers = _ANSWERS.get()
    if answers is not None:
        answers.append(result.status)
    if result.error is not None or result.status in policy.retry_statuses:
        raise TransientAnswer(result)
    return result


@task(name="canary-health", cache_policy=NO_CACHE, persist_result=False)
def health_step(url: str, policy: CanaryPolicy, bearer: str | None) -> int | None:
    """GET the health path; a transient answer is retried, anything else returned."""
    note_attempt()
    headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
    with httpx.Client(follow_redirects=False) as client:
        status, _ = health(
            client, url.rstrip("/") + (policy.health_path or "/"), headers, policy.request_timeout_s
        )
    if status is None or status in policy.retry_statuses:
        raise TransientError(f"health of {url}: {status or 'unreachable'}")
    return status


def check_health(
    steps: StepLog, name: str, url: str, policy: CanaryPolicy, bearer: str | None
) -> str | None:
    """None when healthy (or no health path), else the reason."""
    if not policy.health_path:
        return None
    delays = [policy.retry_delay_s * 2**i for i in range(policy.retries)]
    try:
        status = steps.run_with(name, policy.retries, delays, health_step, url, policy, bearer)
    except TransientError as exc:
        return f"GET {policy.health_path}: {exc}"
    if status != 200:
        return f"GET {policy.health_path}: status {status}, expected 200"
    return None


def _probe_runs(
    steps: StepLog,
    name: str,
    url: str,
    sample: SampleImage,
    policy: CanaryPolicy,
    token: SecretStr | None,
    bearer: str | None,
    runs: int,
) -> list[CanaryRun]:
    out = []
    delays = [policy.retry_delay_s * 2**i for i in range(policy.retries)]
    progress = Progress(f"canary-{httpx.URL(url).host}", f"Canary: {runs} runs")
    for i in range(1, runs + 1):
        step = f"{name}-{i}" if runs > 1 else name
        answers: list[int | None] = []
        token_var = _ANSWERS.set(answers)
        try:
            result = steps.run_with(
                step, policy.retries, delays, request_step, url, sample, policy, token, bearer
            )
        except TransientAnswer as exc:
            result = exc.result
        finally:
            _ANSWERS.reset(token_var)
        attempts = steps.steps[-1].attempts
        run = _as_run(i, result, sample, attempts)
        run.answered_503 = answers.count(503)
        out.append(run)
        progress.update(i, runs, f"Canary: run {i} of {runs}, status {result.status}")
    return out


def _as_run(i: int, result: ProbeResult, sample: SampleImage, attempts: int) -> CanaryRun:
    remote = result.headers.get("x-remote-elapsed-ms")
    if result.image_size is not None:
        w, h = result.image_size
        image = f"{w}x{h}" + ("" if result.image_size == sample.size else " (size differs)")
    else:
        image = result.image_error or ""
    return CanaryRun(
        run=i,
        status=result.status,
        ms=round(result.elapsed_ms, 1),
        remote_ms=float(remote) if remote and remote.replace(".", "", 1).isdigit() else None,
        fallback_used=result.headers.get("x-fallback-used"),
        image=image,
        attempts=attempts,
        error=result.error,
        headers=result.headers,
    )


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
        hits.append(f"{match.signature} ({match.severity}): {line}")
    return hits


# ---------------------------------------------------------------- baseline


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
        traffic = [t for t in pinned_traffic(service) if t.tag != BASELINE_TAG]
        traffic.append(cr.Traffic(revision=chosen, percent=0, tag=BASELINE_TAG))
        service = cr.set_traffic(ctx.services, service, traffic, **ctx.wait)
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
    sample: SampleImage,
    token: SecretStr | None,
) -> tuple[float | None, BaselineSource]:
    """(ms, 'recorded' | 'measured' | 'unavailable' | 'skipped')."""
    if ctx.target.canary.min_speedup is None:
        return None, "skipped"  # no speed-up check: nothing to measure
    record = recorded_release(ctx.target.service) or {}
    if record.get("cpu_baseline_ms") and baseline_still_valid(ctx.target, record):
        return float(record["cpu_baseline_ms"]), "recorded"
    url, tag = steps.run("cpu-baseline", baseline_url_step, ctx, region)
    bearer = invoker_token(ctx, url)
    try:
        check_health(steps, "cpu-baseline-health", url, ctx.target.canary, bearer)
        runs = _probe_runs(
            steps,
            "cpu-baseline-run",
            url,
            sample,
            ctx.target.canary,
            token,
            bearer,
            1,
        )
    finally:
        if tag:
            steps.run("cpu-baseline-untag", untag_step, ctx, region, tag)
    ok = [r.ms for r in runs if r.status == ctx.target.canary.expected_status and r.ms]
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
    sample: SampleImage,
    baseline_ms: float | None,
    log_hits: list[str],
) -> tuple[list[str], dict[str, float | None]]:
    reasons: list[str] = []
    for r in runs:
        if r.status != policy.expected_status:
            what = f"status {r.status}" if r.status is not None else (r.error or "no answer")
            reasons.append(f"run {r.run}: {what}, expected {policy.expected_status}")
            continue
        for header, want in policy.required_headers.items():
            got = r.headers.get(header.lower())
            if got != want:
                reasons.append(f"run {r.run}: {header}: {got!r}, expected {want!r}")
        if policy.check_image and not r.image.startswith(f"{sample.size[0]}x{sample.size[1]}"):
            reasons.append(
                f"run {r.run}: response image {r.image or '?'} is not a "
                f"{sample.size[0]}x{sample.size[1]} image like the input"
            )
        elif policy.check_image and "differs" in r.image:
            reasons.append(f"run {r.run}: response image {r.image}")
    times = pd.Series([r.ms for r in runs if r.status == policy.expected_status and r.ms])
    figures: dict[str, float | None] = {"p50_ms": None, "p95_ms": None, "speedup": None}
    if not times.empty:
        figures["p50_ms"] = round(float(times.median()), 1)
        p95 = figures["p95_ms"] = round(float(times.quantile(0.95)), 1)
        if p95 > policy.p95_limit_ms:
            reasons.append(f"p95 {p95:.0f} ms > limit {policy.p95_limit_ms:.0f} ms")
        if baseline_ms:
            speedup = 1 - float(times.median()) / baseline_ms
            figures["speedup"] = round(speedup, 3)
            if policy.min_speedup is not None and speedup < policy.min_speedup:
                reasons.append(
                    f"speed-up {speedup:.0%} over the CPU baseline ({baseline_ms:.0f} ms) "
                    f"< {policy.min_speedup:.0%}"
                )
    for hit in log_hits:
        reasons.append(f"log: {hit}")
    return reasons, figures


def run_canary(
    ctx: RunContext,
    steps: StepLog,
    region: str,
    revision: str,
    tag_url: str,
) -> CanaryReport:
    """Probe the tag URL `runs` times, read the revision's logs for the window, judge."""
    policy = ctx.target.canary
    try:
        sample = load_sample(policy.sample_path(), policy.content_type)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigurationError(str(exc)) from None
    token = load_token(policy)
    bearer = invoker_token(ctx, tag_url)
    baseline_ms, source = baseline_latency(ctx, steps, region, sample, token)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    unhealthy = check_health(steps, "canary-health", tag_url, policy, bearer)
    runs = _probe_runs_full(steps, tag_url, sample, policy, token, bearer)
    end = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    if policy.log_settle_s:
        time.sleep(policy.log_settle_s)  # log ingestion lag on Google; 0 in the sandbox
    hits = revision_log_hits(ctx, steps, region, revision, start, end)
    reasons, figures = judge(policy, runs, sample, baseline_ms, hits)
    if unhealthy:
        reasons.insert(0, unhealthy)
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
        window_start=start.isoformat(),
        window_end=end.isoformat(),
        judged_at=dt.datetime.now(dt.UTC).isoformat(),
        **figures,
    )
    verdict = "PASSED" if report.passed else "FAILED: " + "; ".join(reasons)
    publish_table(
        [r.model_dump(exclude={"headers"}) for r in runs],
        key=f"canary-{ctx.target.service}",
        description=(
            f"Canary of {revision} in {region} ({policy.runs} runs of {sample.name}, "
            f"p95 {report.p95_ms} ms, CPU baseline {baseline_ms} ms ({source})): {verdict}"
        ),
        columns=RUN_COLUMNS,
    )
    return report


def _probe_runs_full(
    steps: StepLog,
    url: str,
    sample: SampleImage,
    policy: CanaryPolicy,
    token: SecretStr | None,
    bearer: str | None,
) -> list[CanaryRun]:
    return _probe_runs(steps, "canary-run", url, sample, policy, token, bearer, policy.runs)
