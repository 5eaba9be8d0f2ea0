"""The fault matrix: each release stage x each fault it can meet, with the outcome the release
must end in, checked with DESIGN.md's invariants over the service's whole traffic history.

A case is data: scenario overrides for the sandbox, target overrides, and the expectation
(`released` in a region, `rolled_back`, `cpu_fallback`, or `error` with a phrase the message
must contain). `run_case` stages the sandbox, runs the release flow in-process, then checks the
outcome, the invariants, duplicate revisions (a revision created twice, or more revisions than
the case allows) and that the service's release slot is free again. A `build` case releases
without an image: the release builds it on the sandbox Cloud Build (the caller provides the build
blocks), and `max_builds` bounds the builds submitted. bench/faults.py runs every case (plus the
SIGKILL cases, which need a process to kill, and the webhook cases of bench/webhook_faults.py);
tests/release/test_fault_matrix.py runs the marked group in the suite. Used by tests and the
bench only: flows never import it.

After every case the release record and the ledger are compared with the truth (`records`:
the image the tag's revision runs, the commit built, the tag's time, the CPU baseline the canary
measured; bench/fault_records.py) and no flow run of the case may be left Running or Pending
(`left_running`). The SIGKILL cases are bench/fault_kills.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.fault_records import Truth, record_problems, runs_left_running

IMAGE = "registry.sandbox.local/faults/page-service"
EU, US = "europe-west1", "us-central1"
_GPU_ZERO = {"gpu": 0, "gpu_no_zonal_redundancy": 0}


@dataclass(frozen=True)
class Case:
    stage: str
    fault: str
    expect: str  # released | rolled_back | cpu_fallback | error
    scenario: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)
    region: str | None = EU  # where the release must end serving (None: do not check)
    error: str = ""  # for expect == "error": a phrase of the message
    base: str = "healthy"
    build: bool = False  # no image given: the release builds the tag
    max_builds: int | None = None  # Cloud Builds the release may submit (None: not checked)

    @property
    def id(self) -> str:
        return f"{self.stage}:{self.fault}"


def _api(api: str, **behaviour: Any) -> dict[str, Any]:
    return {"apis": {api: behaviour}}


CASES: list[Case] = [
    # quota read (Cloud Quotas quotaInfos)
    Case("quota-read", "503 at 30%", "released", _api("quotas", error_rate=0.3)),
    Case("quota-read", "429 burst", "released", _api("quotas", first_n=3, error_codes=[429])),
    Case("quota-read", "502 page", "released", _api("quotas", first_n=2, error_codes=[502])),
    Case("quota-read", "504", "released", _api("quotas", first_n=2, error_codes=[504])),
    Case(
        "quota-read",
        "connection reset",
        "released",
        _api("quotas", first_n=2, error_codes=["reset"]),
    ),
    # quota polling (QuotaPreferences)
    Case("quota-polling", "granted after polls", "released", base="default", region=US),
    Case(
        "quota-polling",
        "503 at 30% while polling",
        "released",
        _api("quotas", error_rate=0.3),
        base="default",
        region=US,
    ),
    Case(
        "quota-polling",
        "all denied",
        "cpu_fallback",
        {"default_region": {**_GPU_ZERO, "preference": {"decision": "deny"}}},
    ),
    Case(
        "quota-polling",
        "never decided",
        "cpu_fallback",
        {"default_region": {**_GPU_ZERO, "preference": {"decision": "never"}}},
        target={"quota_budget_s": 1},
    ),
    Case(
        "quota-polling",
        "no quota, no request",
        "cpu_fallback",
        {"default_region": _GPU_ZERO},
        target={"quota_request": False},
    ),
    # deploy (Cloud Run Admin API)
    Case("deploy", "503 at 30%", "released", _api("run", error_rate=0.3)),
    Case("deploy", "429 burst", "released", _api("run", first_n=3, error_codes=[429])),
    Case(
        "deploy",
        "connection reset at 20%",
        "released",
        _api("run", error_rate=0.2, error_codes=["reset"]),
    ),
    Case(
        "deploy", "502/504 at 20%", "released", _api("run", error_rate=0.2, error_codes=[502, 504])
    ),
    Case("deploy", "500 at 20%", "released", _api("run", error_rate=0.2, error_codes=[500])),
    Case(
        "deploy",
        "quota refused by the API",
        "released",
        {"regions": {EU: {"deploy_error": {"where": "api"}}}},
        region=US,
    ),
    Case(
        "deploy",
        "quota refused by the operation",
        "released",
        {"regions": {EU: {"deploy_error": {"where": "operation"}}}},
        region=US,
    ),
    Case(
        "deploy",
        "quota refused by the revision",
        "released",
        {"regions": {EU: {"deploy_error": {"where": "revision", "reason": None}}}},
        region=US,
    ),
    Case(
        "deploy",
        "container fails to start",
        "rolled_back",
        {
            "regions": {
                EU: {
                    "deploy_error": {
                        "where": "revision",
                        "reason": None,
                        "message": "The user-provided container failed to start and listen on "
                        "the port defined provided by the PORT=8080 environment variable.",
                    }
                }
            }
        },
    ),
    # readiness
    Case(
        "deploy",
        "503 at 30% and no GPU quota in the primary",
        "released",
        {**_api("run", error_rate=0.3), "regions": {EU: _GPU_ZERO}},
        region=US,
    ),
    Case(
        "readiness",
        "GPU revision never Ready (fault)",
        "rolled_back",
        {"revision_faults": [{"fault": "never_ready"}]},
    ),
    # canary
    Case(
        "canary",
        "silent CPU fallback",
        "rolled_back",
        {"revision_faults": [{"fault": "silent_cpu_fallback"}]},
    ),
    Case("canary", "OOM", "rolled_back", {"revision_faults": [{"fault": "oom"}]}),
    Case(
        "canary",
        "5xx on every request",
        "rolled_back",
        {"revision_faults": [{"fault": "http_503"}]},
    ),
    Case(
        "canary",
        "one 5xx then fine",
        "released",
        {"revision_faults": [{"fault": "http_503", "requests": 1}]},
    ),
    Case(
        "canary",
        "non-ASCII header 500",
        "rolled_back",
        {"revision_faults": [{"fault": "unicode_header"}]},
    ),
    Case(
        "canary",
        "pages slower than the p95 limit",
        "rolled_back",
        {"serving": {"gpu_ms": 400, "cpu_ms": 4000}},
        target={"canary_p95_limit_ms": 100},
    ),
    Case("canary", "Cloud Logging 503 at 30%", "released", _api("logging", error_rate=0.3)),
    # traffic update (the cutover and rollback PATCHes)
    Case("traffic", "503 at 15% of Cloud Run calls", "released", _api("run", error_rate=0.15)),
    Case(
        "traffic",
        "rollback under 429 bursts",
        "rolled_back",
        {**_api("run", error_rate=0.2, error_codes=[429]), "revision_faults": [{"fault": "oom"}]},
    ),
    Case(
        "traffic",
        "lost answers at 10%",
        "released",
        _api("run", error_rate=0.1, error_codes=["lost_answer"]),
    ),
]


def _build(fault: str, expect: str, scenario: dict[str, Any], **kw: Any) -> Case:
    return Case("build", fault, expect, scenario, build=True, max_builds=1, **kw)


CASES += [
    # build (Cloud Build): the release builds the tag; one build at most, whatever happens
    _build(
        "a step fails (No space left on device)",
        "error",
        {"builds": {"fail_step": "[builder", "message": "No space left on device"}},
        error="No space left on device",
        region=None,
    ),
    _build("503 at 30% on submission and polling", "released", _api("build", error_rate=0.3)),
    _build("429 burst", "released", _api("build", first_n=3, error_codes=[429])),
    _build(
        "answer to the submission lost",
        "released",
        _api("build", first_n=1, error_codes=["lost_answer"]),
    ),
    _build(
        "build timeout",
        "error",
        {"builds": {"step_delay_ms": 30_000}},
        target={"build_timeout_s": 60},
        error="TIMEOUT",
        region=None,
    ),
]


def target_overrides(case: Case) -> dict[str, Any]:
    """The case's target settings as ReleaseTarget fields (shortcuts resolved)."""
    fields = {
        k: v for k, v in case.target.items() if not k.startswith(("quota_", "canary_", "build_"))
    }
    fields.setdefault("ready_timeout_s", 8)
    return fields


def apply_target_shortcuts(target: Any, case: Case) -> Any:
    if "quota_budget_s" in case.target:
        target.quota.budget_s = case.target["quota_budget_s"]
    if "quota_request" in case.target:
        target.quota.request = case.target["quota_request"]
    if "canary_p95_limit_ms" in case.target:
        target.canary.p95_limit_ms = case.target["canary_p95_limit_ms"]
    return target


@dataclass
class CaseResult:
    id: str
    expect: str
    got: str
    passed: bool
    violations: list[str]
    duplicates: list[str]
    slot_held: bool
    detail: str = ""
    records: list[str] = field(default_factory=list)  # record / ledger mismatches with the truth
    left_running: list[str] = field(default_factory=list)  # flow runs still Running / Pending


def slot_held(service: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from shipyard.flows.release.slot import slot_name

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(slot_name(service))
        except ObjectNotFound:
            return False
        return limit.active_slots > 0


def duplicate_revisions(history: list[dict], admin_calls: dict[str, int]) -> list[str]:
    """Revisions created more than once per service (a name that disappears and comes back)."""
    problems = []
    seen: dict[str, set[str]] = {}
    for entry in history:
        now = set(entry.get("revisions", {}))
        before = seen.setdefault(entry["name"], set())
        before |= now
    created = admin_calls.get("run.revision_created", 0)
    distinct = sum(len(v) for v in seen.values())
    if created > distinct:
        problems.append(f"{created} revisions created for {distinct} distinct names")
    return problems


BuildBlocks = Callable[[str, float], tuple[dict[str, Any], str]]


def run_case(
    case: Case,
    stage: Callable[..., Any],
    make_target: Callable[..., Any],
    admin: Any,
    service: str,
    build_blocks: BuildBlocks | None = None,
) -> CaseResult:
    """Stage, release, check. `stage(base, **overrides)` resets the sandbox;
    `make_target(**fields)` builds the ReleaseTarget for `service`; for a build case,
    `build_blocks(service, timeout_s)` saves the build blocks for `service` and returns
    (the target fields naming them, the commit to build)."""
    from sandbox.release_invariants import all_violations
    from shipyard.flows.release.flow import run_release

    started = dt.datetime.now(dt.UTC)
    stage(case.base, **case.scenario)
    fields = target_overrides(case)
    image: str | None = f"{IMAGE}:v1.0.0"
    commit = None
    if case.build:
        if build_blocks is None:
            raise ValueError(f"case {case.id} builds: pass build_blocks")
        extra, commit = build_blocks(service, case.target.get("build_timeout_s", 600))
        fields.update(extra)
        image = None
    target = apply_target_shortcuts(make_target(service=service, **fields), case)
    results = []
    detail = ""
    error_ok = case.expect != "error"
    got: str
    try:
        result = run_release("v1.0.0", target, image=image or "", commit=commit or "")
        results.append(result)
        got = result.outcome
        detail = "; ".join(result.reasons)[:300]
        region_ok = case.region is None or result.region == case.region
        if not region_ok:
            detail = f"ended in {result.region}, expected {case.region}. " + detail
    except Exception as exc:  # noqa: BLE001 - an expected outcome for some cases
        got, region_ok = "error", True
        message = f"{type(exc).__name__}: {exc}"
        error_ok = case.error in message  # the whole message: the detail is cut
        detail = message[:300]
    history = admin.traffic_history(service)
    violations = all_violations(history, results)
    duplicates = duplicate_revisions(history, admin.calls())
    builds = admin.calls().get("build.create", 0)
    if case.max_builds is not None and builds > case.max_builds:
        duplicates.append(f"{builds} Cloud Builds submitted, at most {case.max_builds} expected")
    held = slot_held(service)
    records: list[str] = []
    if results and got in ("released", "rolled_back", "cpu_fallback"):
        result = results[0]
        records = record_problems(
            Truth(
                service=service,
                git_tag="v1.0.0",
                outcome=got,
                revision=result.revision,
                region=result.region,
                commit=result.build.commit if result.build else "",
                tagged_at=result.tag_time.at if result.tag_time else None,
                tagged_at_source=result.tag_time.source if result.tag_time else "release-start",
                cpu_baseline_ms=result.canary.baseline_ms if result.canary else None,
            )
        )
    left = runs_left_running(started)
    passed = (
        got == case.expect
        and region_ok
        and error_ok
        and not violations
        and not duplicates
        and not held
        and not records
        and not left
    )
    return CaseResult(
        case.id, case.expect, got, passed, violations, duplicates, held, detail, records, left
    )
