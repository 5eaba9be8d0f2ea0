"""The canary's requests: each sample sent `runs` times to a URL in the service's protocol, with
the internal token and the invoker's ID token, transient answers retried, every answer judged
against its sample's expected answer (flows/canary/checks.py).

`probe_policy` is the same without a release: a policy tried on any URL (tests, `shipyard init`).
The token is read from a Prefect Secret block and only ever placed in the request header; the
messages say what was sent and what came back, never a header.
"""

from __future__ import annotations

import contextvars
import dataclasses
from typing import cast

import httpx
from prefect import task
from prefect.blocks.system import Secret
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, SecretStr

from shipyard.blocks.canary_policy import CanaryPolicy
from shipyard.flows.canary.checks import (
    answer_problems,
    exchange,
    image_column,
    redact,
    request_shape,
)
from shipyard.flows.canary.samples import Resolved
from shipyard.flows.canary.verdict import run_reasons
from shipyard.flows.observe.progress import Progress
from shipyard.flows.release.context import RunContext
from shipyard.flows.release.steps import StepLog, note_attempt
from shipyard.tasks.canary_probe import ProbeResult, RequestShape, SampleImage, health, probe
from shipyard.tasks.deploy_errors import ConfigurationError
from shipyard.tasks.errors import TransientError


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
    sample: str = ""  # the sample's name (runs are numbered per sample)
    expected_status: int = 200
    problems: list[str] = []  # what is wrong with the answer (empty: as expected)
    exchange: str = ""  # what was sent and what came back, for a failed run's message


class TransientAnswer(TransientError):
    """A retryable answer; carries the probe (never the request headers)."""

    def __init__(self, result: ProbeResult):
        super().__init__(f"{result.url}: {result.status or result.error}")
        self.result = result


# ---------------------------------------------------------------- probing

# The statuses of the current canary run's attempts (each retry is a request of its own): the
# step task appends, `probe_runs` reads. A context variable of the flow's thread; Prefect runs
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
    shape: RequestShape | None = None,
    decode_image: bool = True,
) -> ProbeResult:
    note_attempt()
    with httpx.Client(follow_redirects=False) as client:
        result = probe(
            client,
            url.rstrip("/") + policy.path,
            sample,
            method=policy.method,
            headers={**policy.headers, **_headers(policy, token, bearer)},
            timeout=policy.request_timeout_s,
            decode_image=decode_image,
            keep_headers=[h.lower() for h in policy.required_headers],
            shape=shape,
        )
    if result.sent is not None:  # the policy's path (a URL may route by its own path prefix)
        result.sent = dataclasses.replace(result.sent, path=policy.path)
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


def probe_runs(
    steps: StepLog,
    name: str,
    url: str,
    samples: list[Resolved],
    policy: CanaryPolicy,
    token: SecretStr | None,
    bearer: str | None,
    runs: int,
) -> list[CanaryRun]:
    """Each sample `runs` times (samples in order); steps `{name}-{n}` over all requests (just
    `{name}` for a single one): the first request, which meets a cold instance, is `-1`."""
    out = []
    delays = [policy.retry_delay_s * 2**i for i in range(policy.retries)]
    total = runs * len(samples)
    progress = Progress(f"canary-{httpx.URL(url).host}", f"Canary: {total} runs")
    shape = request_shape(policy)
    secrets = (token.get_secret_value(),) if token is not None else ()
    n = 0
    for resolved in samples:
        for i in range(1, runs + 1):
            n += 1
            step = f"{name}-{n}" if total > 1 else name
            answers: list[int | None] = []
            token_var = _ANSWERS.set(answers)
            try:
                result = steps.run_with(
                    step,
                    policy.retries,
                    delays,
                    request_step,
                    url,
                    resolved.sample,
                    policy,
                    token,
                    bearer,
                    shape,
                    resolved.expect.image,
                )
            except TransientAnswer as exc:
                result = exc.result
            finally:
                _ANSWERS.reset(token_var)
            attempts = steps.steps[-1].attempts
            run = _as_run(i, result, resolved, attempts, secrets)
            run.answered_503 = answers.count(503)
            out.append(run)
            progress.update(n, total, f"Canary: run {n} of {total}, status {result.status}")
    return out


def probe_policy(
    policy: CanaryPolicy,
    url: str,
    samples: list[Resolved],
    *,
    token: SecretStr | None = None,
    bearer: str | None = None,
) -> tuple[list[CanaryRun], list[str]]:
    """The canary's requests and answer checks on `url`, without a release: (runs, reasons;
    none: every answer was as expected). Latency, speed-up and logs are the release's."""
    steps = StepLog()
    runs = probe_runs(steps, "canary-run", url, samples, policy, token, bearer, policy.runs)
    return runs, run_reasons(runs, named=bool(policy.samples))


def _as_run(
    i: int, result: ProbeResult, resolved: Resolved, attempts: int, secrets: tuple[str, ...]
) -> CanaryRun:
    remote = result.headers.get("x-remote-elapsed-ms")
    problems = answer_problems(resolved.expect, resolved.sample, result)
    return CanaryRun(
        run=i,
        sample=resolved.label,
        status=result.status,
        expected_status=resolved.expect.status,
        ms=round(result.elapsed_ms, 1),
        remote_ms=float(remote) if remote and remote.replace(".", "", 1).isdigit() else None,
        fallback_used=result.headers.get("x-fallback-used"),
        image=image_column(resolved.sample, result),
        attempts=attempts,
        error=result.error,
        headers=result.headers,
        problems=[redact(p, secrets) for p in problems],
        exchange=exchange(result, secrets) if problems else "",
    )
