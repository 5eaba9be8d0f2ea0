"""Return a service's traffic to an earlier revision: `shipyard rollback`, or the `rollback` flow.

Without `to`, 100% goes back to the last good revision: the one the release record Variable
names as `previous` (what served before the current release), else the one the last cutover
tagged `prior`. With `to`, a release tag (the revision carrying that tag's `shipyard-release` label,
the GPU one first) or a revision name.

It changes traffic the way a release does: the `cutover` traffic task (100% to the chosen
revision, the revision that served before keeps the `prior` tag, other tags kept) under the
service's release slot, as a `rollback` step (its `shipyard.rollback.*` stage events), then the
release record Variable says what serves now and what it rolled back from. A revision that does
not exist or is not Ready is refused before anything changes (invariant 1).

What it leaves for people (flows/deploy/rollback_report.py): the `rollback-<service>` summary
artifact (what served, what serves now, why, by whom), a `rolled_back_by_hand` ledger row, a new
version of the `release-<service>` summary saying the release was rolled back by hand, and the
service's status (flows/observe/status.py). It is the `rollback` deployment of prefect.yaml too:
the UI's run form takes the same `target` / `to` and gets the same refusals as the CLI.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.variables import Variable
from pydantic import BaseModel, model_validator

from shipyard.blocks.release_target import ReleaseTarget
from shipyard.flows.canary.stage import recorded_release, release_variable
from shipyard.flows.deploy.rollback_report import requested_by, rollback_reported
from shipyard.flows.deploy.templates import ROLE_LABEL, TAG_LABEL
from shipyard.flows.deploy.traffic import cutover_step, good_because
from shipyard.flows.deploy.traffic_split import PRIOR_TAG, pinned_traffic
from shipyard.flows.observe.ledger import LedgerChain, ledger_chain
from shipyard.flows.observe.stage_events import release_scope
from shipyard.flows.observe.status import publish_status
from shipyard.flows.release.context import RunContext
from shipyard.flows.release.params import TargetParam
from shipyard.flows.release.slot import release_slot
from shipyard.flows.release.steps import StepLog
from shipyard.tasks import cloud_run as cr
from shipyard.tasks.errors import PermanentError
from shipyard.tasks.reports import publish_markdown


class RollbackRefused(PermanentError):
    """Nothing changed: the revision asked for does not exist, is not Ready, or there is none."""


class RollbackResult(BaseModel):
    service: str
    # What the records are keyed by (ReleaseTarget.scope: the service, or service-environment);
    # empty: the service.
    scope: str = ""
    region: str
    revision: str
    previous: str | None = None
    git_tag: str | None = None
    image: str | None = None
    url: str = ""
    noop: bool = False

    @model_validator(mode="after")
    def _scope_of_service(self) -> RollbackResult:
        if not self.scope:
            self.scope = self.service
        return self


class _Choice(BaseModel):
    revision: str
    git_tag: str | None
    image: str | None
    previous: str | None
    noop: bool


def _tag_label(git_tag: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", git_tag.lower())[:63]


@task(name="choose-rollback-revision", cache_policy=NO_CACHE, persist_result=False)
def choose_revision(ctx: RunContext, region: str, to: str, record: dict[str, Any]) -> _Choice:
    """The Ready revision to return to (see the module docstring); RollbackRefused otherwise."""
    service = cr.get_service(ctx.services, ctx.service_name(region))
    name = ctx.target.service
    if service is None:
        raise RollbackRefused(f"service {name} does not exist in {region}: nothing to roll back")
    serving = sorted((t for t in pinned_traffic(service) if t.percent), key=lambda t: -t.percent)
    previous = serving[0].revision if serving else None
    revisions = cr.list_revisions(ctx.revisions, ctx.service_name(region))
    by_name = {cr.short_name(r.name): r for r in revisions}
    git_tag: str | None = None
    if not to:
        # The last good revision the release record names, else the cutover's `prior` tag.
        recorded = (record.get("previous") or {}).get("revision")
        prior_tag = next((t.revision for t in cr.traffic_of(service) if t.tag == PRIOR_TAG), None)
        prior = recorded if recorded in by_name else prior_tag
        if not prior:
            raise RollbackRefused(
                f"nothing to roll back to: no revision of {name} in {region} carries the "
                f"`{PRIOR_TAG}` tag (a cutover sets it); name one with --to TAG|REVISION"
            )
        if prior != recorded and good_because(ctx, region, prior) is None:
            # Last good means tested: the `prior` of a first release is the CPU baseline
            # Shipyard started the new service with, never canaried.
            raise RollbackRefused(
                f"nothing good to roll back to: {prior} (the `{PRIOR_TAG}` revision of {name} "
                f"in {region}) never passed a canary nor served before Shipyard; name one with "
                "--to TAG|REVISION if you want it anyway"
            )
        chosen = by_name.get(prior)
    elif to in by_name:
        chosen = by_name[to]
    else:
        label = _tag_label(to)
        tagged = [r for r in revisions if r.labels.get(TAG_LABEL) == label]
        # The tag's GPU revision first, then its CPU baseline; a Ready one before others.
        tagged.sort(
            key=lambda r: (
                r.labels.get(ROLE_LABEL) != "gpu",
                cr.ready_state(r)[0] != "succeeded",
                -r.create_time.timestamp() if r.create_time else 0,
            )
        )
        if not tagged:
            known = released_tags_there(revisions, record)
            raise RollbackRefused(
                f"--to {to!r}: no revision of {name} in {region} is named so or was released "
                f"from that tag; release tags there: {', '.join(known) or 'none'} "
                "(give one of them, or a revision name)"
            )
        chosen, git_tag = tagged[0], to
    if chosen is None:
        raise RollbackRefused(f"the `{PRIOR_TAG}` revision of {name} in {region} no longer exists")
    revision = cr.short_name(chosen.name)
    state, message = cr.ready_state(chosen)
    if state != "succeeded":
        raise RollbackRefused(
            f"--to {to or PRIOR_TAG!r}: revision {revision} in {region} is not Ready "
            f"({state}{': ' + message if message else ''}); choose a Ready revision"
        )
    if git_tag is None:
        git_tag = (record.get("tags") or {}).get(revision) or chosen.labels.get(TAG_LABEL)
    image = chosen.containers[0].image if chosen.containers else None
    noop = [(t.revision, t.percent) for t in serving] == [(revision, 100)]
    return _Choice(revision=revision, git_tag=git_tag, image=image, previous=previous, noop=noop)


def released_tags_there(revisions: list[Any], record: dict[str, Any]) -> list[str]:
    """The release tags of the service's revisions, as git names them (`v1.4.0`): the release
    record's tag of each revision, else the tag the revision's label keeps (sanitized, `v1-4-0`,
    for a revision the record no longer lists); newest first."""
    tags = record.get("tags") or {}
    newest = sorted(
        (r for r in revisions if r.labels.get(TAG_LABEL)),
        key=lambda r: -r.create_time.timestamp() if r.create_time else 0,
    )
    named = (tags.get(cr.short_name(r.name)) or r.labels[TAG_LABEL] for r in newest)
    by_label = {_tag_label(t): t for t in tags.values()}
    return list(dict.fromkeys(by_label.get(t, t) for t in named))


def _where(target: TargetParam) -> tuple[ReleaseTarget, dict[str, Any], str]:
    """(target block, its service's release record, the region that serves)."""
    from shipyard.flows.release.flow import resolve_target

    resolved: ReleaseTarget = resolve_target(target)
    record = recorded_release(resolved.scope) or {}
    return resolved, record, record.get("region") or resolved.primary_region


def check_rollback(target: TargetParam, to: str = "") -> str:
    """What `rollback(target, to)` would return to, checked without starting a flow run (the
    CLI refuses a mistake in one line, and leaves no failed run behind); RollbackRefused."""
    resolved, record, region = _where(target)
    ctx = RunContext(resolved, record.get("git_tag") or "rollback", None)
    return choose_revision.fn(ctx, region, to, record).revision


# No undo hook (flows/observe/undo_hooks.py): a rollback timed out, cancelled or crashed changes
# traffic with one UpdateService call (the cutover step: 100% to the chosen Ready revision and the
# `prior` tag in the same traffic list), which Cloud Run applies whole or not at all. Interrupted
# before the call, the service is as it was; after it, the update completes on Google's side and
# the chosen revision serves (it was Ready before anything changed): 100% is on a Ready revision
# either way. Only the release record may lag: it is written after the update. The release slot
# is let go on the way out (release_slot), or, for a killed process, freed by the next holder
# (flows/release/slot.py).
@flow(name="rollback", flow_run_name="rollback-{target}", log_prints=False, timeout_seconds=1800)
def rollback(
    target: TargetParam = "default", to: str = "", comment: str = "", by: str = ""
) -> RollbackResult:
    """Return 100% of the target service's traffic to an earlier Ready revision.

    Args:
        target: Name of the Shipyard Release Target block whose service to roll back.
        to: Release tag (e.g. v1.4.0) or revision name to return to (empty: the last good
            revision, which served before the current release).
        comment: Why, for the summary and the ledger (e.g. "p95 doubled after v1.5.0").
        by: Who asks (empty: the Prefect user where Prefect knows one, "Prefect UI / API"
            for a run of the deployment, else the local account).
    """
    started_at = dt.datetime.now(dt.UTC)
    resolved, record, region = _where(target)
    logger = get_run_logger()
    who = requested_by(by)
    with (
        release_scope(service=resolved.service, region=region),
        release_slot(resolved.scope, resolved.lock_timeout_s, resolved.slot_lease_s),
    ):
        ctx = RunContext(resolved, record.get("git_tag") or "rollback", None)
        steps = StepLog(resolved.retries, resolved.retry_delays())
        choice = steps.run("choose-rollback-revision", choose_revision, ctx, region, to, record)
        if choice.noop:
            logger.info("rollback: %s already serves 100%% in %s", choice.revision, region)
            service = cr.get_service(ctx.services, ctx.service_name(region))
            url = service.uri if service is not None else ""
        else:
            moved = steps.run("rollback", cutover_step, ctx, region, choice.revision)
            url = moved.url
            logger.warning(
                "rollback of %s in %s: 100%% to %s (tag %s), was %s",
                resolved.service,
                region,
                choice.revision,
                choice.git_tag or "-",
                choice.previous or "-",
            )
    result = RollbackResult(
        service=resolved.service,
        scope=resolved.scope,
        region=region,
        revision=choice.revision,
        previous=choice.previous,
        git_tag=choice.git_tag,
        image=choice.image,
        url=url,
        noop=choice.noop,
    )
    if choice.noop:
        publish_markdown(
            f"# Rollback of `{result.service}`: nothing moved\n\n`{result.revision}` already "
            f"serves 100% in `{region}` (asked by {who}).",
            key=f"rollback-{result.scope}",
            description=f"Rollback of {result.service}: {result.revision} already serves",
        )
        return result
    _record(result, record)
    ctx_run = FlowRunContext.get()
    run_id = str(ctx_run.flow_run.id) if ctx_run is not None and ctx_run.flow_run else None
    # The row's environment: a promotion refuses a tag rolled back by hand in the stage before.
    chain = LedgerChain(
        environment=resolved.environment, target=resolved._block_document_name or ""
    )
    with ledger_chain(chain):
        rollback_reported(
            result, record, by=who, comment=comment, started_at=started_at, flow_run_id=run_id
        )
    publish_status(
        resolved,
        f"rollback by hand to {result.git_tag or result.revision} by {who}",
    )
    return result


def _record(result: RollbackResult, previous: dict[str, Any]) -> None:
    """The release record says what serves now, and what it rolled back from."""
    Variable.set(
        release_variable(result.scope),
        {
            # What the earlier release attempted and measured belongs to that release.
            **{k: v for k, v in previous.items() if k not in ("attempted", "canary_p95_ms")},
            "git_tag": result.git_tag,
            "outcome": "rolled_back_by_hand",
            "region": result.region,
            "revision": result.revision,
            "url": result.url,
            "image": result.image,
            "rolled_back_from": {
                "revision": result.previous,
                "git_tag": previous.get("git_tag"),
                "image": previous.get("image"),
            },
            # A second rollback returns to what this one left.
            "previous": {
                "revision": result.previous,
                "git_tag": previous.get("git_tag"),
                "image": previous.get("image"),
                "region": result.region,
            },
            "recorded_at": dt.datetime.now(dt.UTC).isoformat(),
        },
        overwrite=True,
    )
