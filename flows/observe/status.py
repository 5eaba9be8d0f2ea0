"""What serves a service right now, per region: read from Cloud Run, published after every change.

`service_status(target)` reads the truth: per region of the target where the service exists,
each revision that has traffic or a tag (trafficStatuses: what Cloud Run serves, not the spec a
refused update left behind), with its share, tags, image, git tag, GPU or CPU, Ready (and why
not), when it passed its canary, and whether it is good (flows/deploy/traffic.py `good_because`);
plus the rollout in progress (flows/rollout/journal.py) and the `canary` tag at 0 % during a run.

`publish_status(target, reason)` turns it into the `status-<scope>` markdown artifact (scope:
ReleaseTarget.scope, the service or `service-environment`) and the
"Serving now" section of the Prefect deployments' descriptions (flows/observe/status_page.py),
and never raises: it is called at the end of every action that changes what serves (release,
step, rollback, abort, cancel, sweep), where a failure to report must not change the action's
outcome. A failure is one WARNING.

Image: what the revision's container names, as Cloud Run reports it. The pipeline deploys
`repository@sha256:…` (flows/build/flow.py ReleaseImage), so the digest is shown; an image given
by tag (`release --image repo:tag`) is shown as that tag and flagged "not pinned": the status
does not ask the registry what the tag means now (it may have moved since the deploy, and the
status must not depend on a registry being up).

Canary passed at: the canary verdict Variable (flows/release/hooks.py `record_verdict`) holds the
last passed canary's figures with `judged_at`; for a revision released earlier it is gone, and
the ledger's row of the release that cut over to it says when (its `finished_at`, a few seconds
after the pass: shown as "by <time>").
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any, Literal, cast

from pydantic import BaseModel, model_validator

from shipyard.blocks.release_target import ReleaseTarget, as_release_target
from shipyard.tasks import cloud_run as cr

logger = logging.getLogger("shipyard.status")

CANARY_TAG = "canary"  # flows/deploy/traffic_split.py CANARY_TAG (imported lazily there)


class RevisionRow(BaseModel):
    """One revision that has traffic or a tag in one region."""

    revision: str
    percent: int = 0
    tags: list[str] = []
    image: str = ""  # the container image as Cloud Run reports it
    digest: str | None = None  # sha256:… when the image is a digest reference
    pinned: bool = False  # the image names a digest (False: a tag, resolved at deploy time)
    git_tag: str | None = None
    kind: Literal["GPU", "CPU"] = "CPU"
    accelerator: str | None = None  # node selector, e.g. nvidia-l4
    ready: Literal["succeeded", "failed", "reconciling", "missing"] = "reconciling"
    not_ready_because: str = ""
    canary_passed_at: str | None = None
    canary_passed_source: Literal["", "verdict", "ledger"] = ""
    good_because: str | None = None  # flows/deploy/traffic.py good_because; None: untested
    last_good: bool = False


class RegionStatus(BaseModel):
    region: str
    url: str = ""
    revisions: list[RevisionRow] = []
    last_good: str | None = None
    error: str = ""  # the region could not be read: why (one line)

    def serving(self) -> list[RevisionRow]:
        return sorted((r for r in self.revisions if r.percent), key=lambda r: -r.percent)

    def canary(self) -> RevisionRow | None:
        """The revision under its 0 % canary test (the `canary` tag), if any."""
        return next((r for r in self.revisions if CANARY_TAG in r.tags), None)


class RolloutStatus(BaseModel):
    """A rollout in progress (the journal): where it stands."""

    git_tag: str
    region: str
    new: str
    stable: str
    percent: int
    state: str  # baking | awaiting-approval | ending
    step: int  # steps taken so far (the current one included)
    steps: int  # steps the target's rollout policy names (0: unknown)
    flow_run_id: str | None = None


class ServiceStatus(BaseModel):
    service: str
    # What the artifact and the records read are keyed by (ReleaseTarget.scope); empty: service.
    scope: str = ""
    project: str
    read_at: str
    regions: list[RegionStatus] = []
    absent: list[str] = []  # the target's regions where the service does not exist
    rollout: RolloutStatus | None = None
    reason: str = ""  # what changed it (publish_status's reason)
    # The ReleaseTarget block's name when known: a fleet's `release-<target>` deployment (its
    # `target` parameter fixed to one block) shows that target's service only.
    target: str = ""

    @model_validator(mode="after")
    def _scope_of_service(self) -> ServiceStatus:
        if not self.scope:
            self.scope = self.service
        return self

    def headline(self) -> str:
        """One line: what serves where, last good, when and why (the artifact's first line)."""
        parts = [_region_line(self, r) for r in self.regions]
        if not parts:
            parts = [f"{self.service} exists in none of its regions ({', '.join(self.absent)})"]
        if self.rollout is not None:
            ro = self.rollout
            of = f" of {ro.steps}" if ro.steps else ""
            parts.append(
                f"rollout of {ro.git_tag}: step {ro.step}{of} at {ro.percent}%, {ro.state}"
            )
        when = _hhmm(self.read_at)
        tail = f"updated {when}" + (f" after: {self.reason}" if self.reason else "")
        return "; ".join([*parts, tail])


def _label(row: RevisionRow | None) -> str:
    if row is None:
        return "-"
    return row.git_tag or row.revision


def _region_line(status: ServiceStatus, region: RegionStatus) -> str:
    if region.error:
        return f"{region.region}: not read ({region.error})"
    serving = region.serving()
    if not serving:
        return f"nothing serves in {region.region}"
    kinds = "/".join(sorted({r.kind for r in serving}))
    if len(serving) == 1:
        line = f"{_label(serving[0])} serves {serving[0].percent}% in {region.region} on {kinds}"
    else:
        share = " + ".join(f"{_label(r)} {r.percent}%" for r in serving)
        line = f"{share} serve in {region.region} on {kinds}"
    unready = [r for r in serving if r.ready != "succeeded"]
    if unready:
        line += " (NOT Ready: " + ", ".join(r.revision for r in unready) + ")"
    good = next((r for r in region.revisions if r.revision == region.last_good), None)
    line += f"; last good {_label(good) if good else region.last_good or 'none yet'}"
    canary = region.canary()
    if canary is not None and not canary.percent:
        line += f"; canary {_label(canary)} at 0% (under test)"
    return line


def _hhmm(iso: str) -> str:
    try:
        moment = dt.datetime.fromisoformat(iso).astimezone(dt.UTC)
    except ValueError:
        return iso
    return moment.strftime("%Y-%m-%d %H:%M UTC")


# ---------------------------------------------------------------- reading


def resolve_target(target: Any) -> ReleaseTarget:
    """A ReleaseTarget from a block, its name, or its fields."""
    return as_release_target(target)


def service_status(target: Any, reason: str = "") -> ServiceStatus:
    """What serves the target's service now (see the module docstring). Raises on an unreadable
    target; a region whose Cloud Run cannot be read is reported with its error, the others read."""
    from prefect.context import SyncClientContext

    # One Prefect client for every read: each new one costs an SSL context (~90 ms).
    with SyncClientContext.get_or_create():
        resolved = resolve_target(target)
        status = _service_status(resolved, reason)
    block = target if isinstance(target, str) else getattr(resolved, "_block_document_name", None)
    status.target = block or ""
    return status


def _service_status(resolved: ReleaseTarget, reason: str) -> ServiceStatus:
    from shipyard.flows.canary.stage import recorded_release
    from shipyard.flows.release.context import RunContext

    ctx = RunContext(resolved, "status", None)
    record = recorded_release(resolved.scope) or {}
    verdict = _verdict(resolved.scope)
    journal = _journal(resolved)
    status = ServiceStatus(
        service=resolved.service,
        scope=resolved.scope,
        project=ctx.project,
        read_at=dt.datetime.now(dt.UTC).isoformat(),
        reason=reason,
        rollout=journal,
    )
    ledger_times: dict[str, str] | None = None
    for region in resolved.regions:
        try:
            read = _region(ctx, region, record, verdict, journal)
        except Exception as exc:  # one region unread must not hide the others
            if _unreachable(exc) and not status.regions:
                raise  # Google (or the sandbox) is not there at all: say so once
            status.regions.append(RegionStatus(region=region, error=_one_line(exc)))
            continue
        if read is None:
            status.absent.append(region)
            continue
        wants_ledger = any(
            r.good_because == "passed its canary" and not r.canary_passed_at for r in read.revisions
        )
        if wants_ledger:
            ledger_times = (
                _released_at(resolved.service, resolved.environment)
                if ledger_times is None
                else ledger_times
            )
            for row in read.revisions:
                if row.good_because == "passed its canary" and not row.canary_passed_at:
                    row.canary_passed_at = ledger_times.get(row.revision)
                    row.canary_passed_source = "ledger" if row.canary_passed_at else ""
        status.regions.append(read)
    return status


def _region(
    ctx: Any,
    region: str,
    record: dict[str, Any],
    verdict: tuple[str, str] | None,
    journal: RolloutStatus | None,
) -> RegionStatus | None:
    from shipyard.flows.deploy.templates import TAG_LABEL
    from shipyard.flows.deploy.traffic import good_because
    from shipyard.flows.deploy.traffic_split import PRIOR_TAG

    service = cr.get_service(ctx.services, ctx.service_name(region))
    if service is None:
        return None
    rows: dict[str, RevisionRow] = {}
    for t in cr.serving_traffic(service):
        if not t.revision or (not t.percent and not t.tag):
            continue
        row = rows.setdefault(t.revision, RevisionRow(revision=t.revision))
        row.percent += t.percent
        if t.tag and t.tag not in row.tags:
            row.tags.append(t.tag)
    released = record.get("tags") or {}
    # Revision labels hold a sanitized tag (v1-4-0): the record knows the real one (v1.4.0).
    known = [
        *released.values(),
        record.get("git_tag"),
        (record.get("previous") or {}).get("git_tag"),
    ]
    by_label = {_tag_label(t): t for t in known if t}
    for row in rows.values():
        found = cr.get_revision(ctx.revisions, ctx.revision_path(region, row.revision))
        if found is None:
            row.ready, row.not_ready_because = "missing", "the revision no longer exists"
            continue
        state, message = cr.ready_state(found)
        row.ready = cast(Any, state)
        row.not_ready_because = "" if state == "succeeded" else message
        image = found.containers[0].image if found.containers else ""
        row.image, row.pinned = image, "@sha256:" in image
        row.digest = image.split("@", 1)[1] if row.pinned else None
        accelerator = found.node_selector.accelerator if found.node_selector else ""
        gpus = (
            found.containers[0].resources.limits.get("nvidia.com/gpu") if found.containers else None
        )
        row.kind = "GPU" if accelerator or gpus else "CPU"
        row.accelerator = accelerator or None
        label = found.labels.get(TAG_LABEL)
        if journal is not None and row.revision == journal.new:
            row.git_tag = journal.git_tag
        else:
            row.git_tag = released.get(row.revision) or by_label.get(label or "", label)
        row.good_because = good_because(ctx, region, row.revision)
        if verdict is not None and verdict[0] == row.revision:
            row.canary_passed_at, row.canary_passed_source = verdict[1], "verdict"
    out = RegionStatus(region=region, url=service.uri, revisions=list(rows.values()))
    out.last_good = _last_good(out, record, PRIOR_TAG)
    for row in out.revisions:
        row.last_good = row.revision == out.last_good
    out.revisions.sort(key=lambda r: (-r.percent, r.revision))
    return out


def _tag_label(git_tag: str) -> str:
    """The `shipyard-release` label of a git tag (flows/deploy/templates.py writes it so)."""
    return re.sub(r"[^a-z0-9_-]+", "-", str(git_tag).lower())[:63]


def _last_good(region: RegionStatus, record: dict[str, Any], prior_tag: str) -> str | None:
    """The most recent good revision: the good one that serves most, else what the release
    record names as previous (what `shipyard rollback` returns to), else the good `prior`."""
    good = [r for r in region.serving() if r.good_because and r.ready == "succeeded"]
    if good:
        return good[0].revision
    previous = (record.get("previous") or {}).get("revision")
    if previous and (record.get("region") in (None, region.region)):
        return str(previous)
    prior = next((r for r in region.revisions if prior_tag in r.tags and r.good_because), None)
    return prior.revision if prior else None


def _verdict(scope: str) -> tuple[str, str] | None:
    """(revision, when its canary passed) from the verdict Variable; its `judged_at`, else when
    the Variable was last written (a verdict is written once, right after the canary passed)."""
    from prefect.client.orchestration import get_client

    from shipyard.flows.release.hooks import verdict_variable

    with get_client(sync_client=True) as client:
        found = client.read_variable_by_name(verdict_variable(scope))
    if found is None or not isinstance(found.value, dict):
        return None
    revision = found.value.get("revision")
    figures = found.value.get("canary") or {}
    when = figures.get("judged_at") if isinstance(figures, dict) else None
    if not when and found.updated is not None:
        when = found.updated.isoformat()
    return (str(revision), str(when)) if revision and when else None


def _journal(target: ReleaseTarget) -> RolloutStatus | None:
    from shipyard.flows.rollout.journal import read

    journal = read(target.scope)
    if journal is None:
        return None
    policy = getattr(target, "rollout", None)
    return RolloutStatus(
        git_tag=journal.git_tag,
        region=journal.region,
        new=journal.new,
        stable=journal.stable,
        percent=journal.percent,
        state=journal.state,
        step=len(journal.steps) + (1 if journal.state != "ending" else 0),
        steps=len(policy.steps) if policy is not None else 0,
        flow_run_id=journal.flow_run_id,
    )


def _released_at(service: str, environment: str | None = None) -> dict[str, str]:
    """revision -> when the release that cut over to it ended (the ledger's last such row of
    the target's environment: one ledger per service holds every environment's rows)."""
    from shipyard.flows.observe.ledger import read_ledger

    times: dict[str, str] = {}
    for entry in read_ledger(service):  # oldest first: the last write wins
        if (getattr(entry, "environment", None) or None) != (environment or None):
            continue  # another environment's release of the same revision name
        if entry.outcome == "released" and entry.revision and not entry.noop:
            times[entry.revision] = entry.finished_at
    return times


def _unreachable(exc: BaseException) -> bool:
    """Nothing answers at the Google endpoint (connection refused, no such host)."""
    text = f"{type(exc).__name__} {exc}"
    return any(s in text for s in ("ConnectionError", "Connection refused", "Max retries exceeded"))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


# ---------------------------------------------------------------- publishing


def publish_status(target: Any, reason: str) -> None:
    """Publish what serves `target`'s service now; `reason`: what changed it (e.g. 'release
    v1.4.0: released', 'rollback by hand', 'step 10%'). Never raises: a failure is one WARNING
    (in the run's log inside a flow run)."""
    try:
        from prefect.context import SyncClientContext

        from shipyard.flows.observe.status_page import publish

        with SyncClientContext.get_or_create():  # one Prefect client for the reads and writes
            publish(service_status(target, reason))
    except Exception as exc:  # noqa: BLE001 - reporting must never change the action's outcome
        service = getattr(target, "service", target if isinstance(target, str) else "?")
        _warn(f"status of {service} not published: {_one_line(exc)}")


def _warn(message: str) -> None:
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging import get_run_logger

    if FlowRunContext.get() is not None or TaskRunContext.get() is not None:
        get_run_logger().warning(message)
    else:
        logger.warning(message)


__all__ = [
    "RegionStatus",
    "RevisionRow",
    "RolloutStatus",
    "ServiceStatus",
    "publish_status",
    "service_status",
]
