"""Cloud Run Admin v2 resources of the emulator: services, revisions, traffic, traffic history.

The model, independent of HTTP. A create/update is applied at request time (the spec changes at
once; its long-running operation reports the outcome, and the service shows `reconciling`
until the operation is done). With a Docker daemon a new revision's container starts in the
background (up to its startup probe's window): until it listens or fails, the revision and the
service reconcile, the traffic serves as before, and the operation is not done
(`Reconcile`); every API answers meanwhile. Rules that mirror Google:

- a new revision is created when the template changes; traffic-only updates create none;
  `template.revision` names it (must start with "{service}-"; a name that exists with a
  different template is 409 ALREADY_EXISTS), else `{service}-{generation:05d}-{abc}`;
- traffic is validated (percents add up to 100, tags unique); traffic that names a missing
  revision, or would reach a revision that is not Ready, fails the operation: the requested
  `traffic` is kept, `trafficStatuses` stay where they were;
- LATEST means the latest *ready* revision.

Deploy failures come from the scenario (per region): quota shortfall (GPU / CPU / memory,
reported where `quota_where` says, by default as Google: see
run_revisions.RevisionLifecycle._deploy_failure), `deploy_error` (where: api | operation | revision),
`never_ready`, and revision faults `never_ready`.
"""

from __future__ import annotations

import asyncio
import copy
import re
import uuid
from typing import Any

from sandbox.emulator import gpu_instances, run_autoscaling
from sandbox.emulator.core import ApiError, now_rfc3339, quota_error_info
from sandbox.emulator.run_limits import check_service_scaling
from sandbox.emulator.run_resources import LATEST, Reconcile, Revision, Service
from sandbox.emulator.run_revisions import RevisionLifecycle
from sandbox.emulator.run_templates import (
    OUTPUT_ONLY,
    camel,
    canonical_service,
    check_template,
)
from sandbox.scenario import DeployError


class RunStore(RevisionLifecycle):
    """state.stores["run"]: every service, revision and the traffic history."""

    # ---- rendering ----------------------------------------------------------------------

    def render_service(self, svc: Service) -> dict:
        op = self.state.operations.get(svc.pending_op or "")
        latest = self.revisions.get(svc.latest_created)
        # "reconciling: Returns true if the Service is currently being acted upon by the system
        # to bring it into the desired state." (google/cloud/run/v2/service.proto)
        pending = (op is not None and not op.done) or (latest is not None and latest.reconciling)
        if pending:
            terminal = {"type": "Ready", "state": "CONDITION_RECONCILING"}
        elif svc.failure:
            terminal = {
                "type": "Ready",
                "state": "CONDITION_FAILED",
                "severity": "ERROR",
                **svc.failure,
            }
        else:
            terminal = {"type": "Ready", "state": "CONDITION_SUCCEEDED"}
        terminal["lastTransitionTime"] = svc.update_time
        configs = {"type": "ConfigurationsReady", "state": "CONDITION_SUCCEEDED"}
        if latest is not None and latest.reconciling:
            configs["state"] = "CONDITION_RECONCILING"
        elif latest is not None and not latest.ready:
            configs = {
                "type": "ConfigurationsReady",
                "state": "CONDITION_FAILED",
                "message": latest.message,
                "reason": "REVISION_FAILED",
            }
        routes = {
            "type": "RoutesReady",
            "state": "CONDITION_SUCCEEDED" if svc.statuses else "CONDITION_FAILED",
        }
        body = copy.deepcopy(svc.spec)
        body.update(
            name=svc.name,
            uid=svc.uid,
            generation=str(svc.generation),
            createTime=svc.create_time,
            updateTime=svc.update_time,
            creator="sandbox@shipyard.local",
            lastModifier="sandbox@shipyard.local",
            observedGeneration=str(svc.generation if not pending else svc.generation - 1),
            terminalCondition=terminal,
            conditions=[routes, configs],
            latestReadyRevision=svc.latest_ready,
            latestCreatedRevision=svc.latest_created,
            trafficStatuses=[self._status_json(svc, s) for s in svc.statuses],
            uri=self.uri(svc),
            urls=[self.uri(svc)],
            reconciling=pending,
            etag=svc.etag,
        )
        body.setdefault("ingress", "INGRESS_TRAFFIC_ALL")
        body.setdefault("launchStage", "GA")
        return body

    # ---- deploys ------------------------------------------------------------------------

    def apply(
        self,
        name: str,
        body: dict,
        *,
        creating: bool,
        update_mask: list[str] | None = None,
        allow_missing: bool = False,
        validate_only: bool = False,
    ) -> tuple[Service, Reconcile]:
        """Create or update a service. Raises ApiError for what the API call itself refuses;
        returns the service and what its operation will report (maybe not decided yet)."""
        _, project, _, region, _, short = name.split("/")
        existing = self.services.get(name)
        if creating and existing is not None:
            raise ApiError(409, f"Resource '{short}' already exists.")
        if not creating and existing is None and not allow_missing:
            self.get_service(name)  # raises NOT_FOUND
        incoming = canonical_service(body)
        etag = incoming.get("etag", "")
        if existing is not None and etag and etag != existing.etag:
            raise ApiError(
                409,
                f"The etag provided ({etag}) does not match the current etag of service "
                f"'{short}' ({existing.etag}): get the service again and retry.",
                status="ABORTED",
            )
        incoming = {k: v for k, v in incoming.items() if k not in OUTPUT_ONLY}
        spec = self._merged_spec(existing, incoming, update_mask)
        if not spec.get("traffic"):
            spec["traffic"] = [{"type": LATEST, "percent": 100}]
        template = spec.setdefault("template", {})
        if not template.get("containers"):
            raise ApiError(
                400,
                "service.template.containers: at least one container is required "
                "(set template.containers[0].image).",
            )
        check_template(template, region)
        check_service_scaling(spec)
        changed = existing is None or template != existing.spec.get("template", {})
        new_rev_name = ""
        if changed:
            new_rev_name = self._check_revision_name(name, short, template)
        self._validate_traffic(name, spec["traffic"], new_rev_name)

        failure = (
            self._deploy_failure(project, region, template, creating=existing is None)
            if changed
            else None
        )
        if failure is not None and failure.where == "api":
            self.state.calls["run.deploy_error.api"] += 1
            raise ApiError(429, failure.message, details=failure_details(project, region, failure))
        if validate_only:
            return existing or self._stub(name, project, region, short, spec), Reconcile()
        if failure is not None and failure.where == "operation":
            self.state.calls["run.deploy_error.operation"] += 1
            if existing is not None:
                existing.failure = {"reason": "REVISION_FAILED", "message": failure.message}
            refused = ApiError(
                429, failure.message, details=failure_details(project, region, failure)
            )
            return existing or self._stub(name, project, region, short, spec), Reconcile(
                error=refused
            )

        now = now_rfc3339()
        if existing is None:
            svc = Service(
                name=name,
                short=short,
                project=project,
                region=region,
                uid=str(uuid.uuid4()),
                create_time=now,
                spec=spec,
                generation=1,
            )
            self.services[name] = svc
            self.state.calls["run.service_created"] += 1
        else:
            svc = existing
            svc.spec = spec
            svc.generation += 1
        svc.update_time = now
        svc.etag = f'"{uuid.uuid4().hex[:16]}"'

        outcome = Reconcile(creating=existing is None)
        if changed:
            outcome.revision = self._create_revision(svc, template, new_rev_name, failure)
            svc.latest_created = outcome.revision.name
        latest = self.revisions.get(svc.latest_created)
        if latest is not None and latest.reconciling:
            # Decided when the latest revision is (`_revision_decided`); what serves stays.
            outcome.decided = False
            self.waiting.setdefault(latest.name, []).append(outcome)
            if latest is outcome.revision:
                self.start_container(latest, self._revision_decided)
            return svc, outcome
        self._settle(svc, outcome)
        return svc, outcome

    def _settle(self, svc: Service, outcome: Reconcile) -> None:
        """The end of a create/update's reconciliation: latest Ready revision, traffic, the
        terminal condition, the traffic history; decides `outcome`."""
        op_error = _not_ready(outcome.revision)
        svc.latest_ready = next(
            (r.name for r in reversed(self.service_revisions(svc.name)) if r.ready), ""
        )
        statuses, refused = self._resolve_traffic(svc, svc.spec["traffic"])
        if refused is not None:
            self.state.calls["run.traffic_refused"] += 1
            op_error = op_error or refused
            # Google keeps the requested `traffic`; only `trafficStatuses` (and
            # latestReadyRevision) keep the last serving state: "If reconciliation failed,
            # traffic_statuses, observed_generation, and latest_ready_revision will have the
            # state of the last serving revision, or empty for newly created Services."
            # (google/cloud/run/v2/service.proto, Service.reconciling): the statuses stay.
        else:
            svc.statuses = statuses
        if op_error is not None:
            svc.failure = {"reason": "REVISION_FAILED", "message": op_error.message}
        else:
            svc.failure = None
        self.record(svc, "create" if outcome.creating else "update", note=_note(op_error))
        gpu_instances.refresh(self, svc.project, svc.region)  # minimums follow the traffic
        warming = run_autoscaling.warm_minimums(self.state, self, self.service_revisions(svc.name))
        if warming and op_error is None:
            # Done once the minimums it asks for are started (MIN_INSTANCES_WARMING,
            # run_autoscaling.warm_minimums): after it, a traffic shift finds them warm.
            outcome.decided = False
            pending = set(warming)

            def started(task: asyncio.Task) -> None:
                pending.discard(task)
                if not pending:
                    outcome.decide(None)

            for task in warming:
                task.add_done_callback(started)
            return
        outcome.decide(op_error)

    def _revision_decided(self, rev: Revision) -> None:
        """A revision's container started or failed: settle the creates/updates waiting."""
        waiting = self.waiting.pop(rev.name, [])
        svc = self.services.get(rev.service)
        if svc is None:  # deleted (or the sandbox reset) while the container started
            gone = ApiError(
                409,
                f"Service '{rev.service.rsplit('/', 1)[-1]}' was deleted while revision "
                f"'{rev.short}' was being deployed.",
                status="ABORTED",
            )
            for outcome in waiting:
                outcome.decide(gone)
            return
        latest = self.revisions.get(svc.latest_created)
        for outcome in waiting:
            made = outcome.revision
            if made is not None and made is not latest:
                # A newer revision superseded it: the service's state is that one's to settle;
                # this operation reports its own revision.
                outcome.decide(_not_ready(made))
            elif latest is not None and latest.reconciling:  # the newer one's end settles it
                self.waiting.setdefault(latest.name, []).append(outcome)
            else:
                self._settle(svc, outcome)

    def _stub(self, name: str, project: str, region: str, short: str, spec: dict) -> Service:
        """A service that is not stored: what a failed create or a validateOnly one answers."""
        return Service(
            name=name,
            short=short,
            project=project,
            region=region,
            uid="",
            create_time=(now := now_rfc3339()),
            update_time=now,  # an empty timestamp breaks the client's parse of the metadata
            spec=spec,
        )

    @staticmethod
    def _merged_spec(existing: Service | None, incoming: dict, mask: list[str] | None) -> dict:
        if existing is None or not mask:
            return incoming
        spec = copy.deepcopy(existing.spec)
        for path in mask:
            keys = [camel(k) for k in path.split(".")]
            src: Any = incoming
            for key in keys:
                src = src.get(key) if isinstance(src, dict) else None
            dst = spec
            for key in keys[:-1]:
                dst = dst.setdefault(key, {})
            if src is None:
                dst.pop(keys[-1], None)
            else:
                dst[keys[-1]] = copy.deepcopy(src)
        return spec

    def _check_revision_name(self, service: str, short: str, template: dict) -> str:
        """The new revision's short name (validated), or "" to generate one."""
        wanted = template.get("revision", "")
        if not wanted:
            return ""
        if not wanted.startswith(f"{short}-") or not re.fullmatch(r"[a-z0-9-]{1,63}", wanted):
            raise ApiError(
                400,
                f"service.template.revision: revision name '{wanted}' must start with the "
                f"service name followed by '-' (e.g. '{short}-v2') and use only lowercase "
                "letters, digits and '-' (63 characters at most).",
            )
        if f"{service}/revisions/{wanted}" in self.revisions:
            raise ApiError(
                409,
                f"Revision named '{wanted}' with different configuration already exists.",
            )
        return wanted

    def delete_service(self, name: str, etag: str = "") -> dict:
        svc = self.get_service(name)
        if etag and etag != svc.etag:
            raise ApiError(
                409,
                f"The etag provided ({etag}) does not match the current etag of service "
                f"'{svc.short}' ({svc.etag}).",
                status="ABORTED",
            )
        rendered = self.render_service(svc)
        for rev in self.service_revisions(name):
            del self.revisions[rev.name]
            self.instances.pop(rev.name, None)
        del self.services[name]
        self.record(svc, "delete", exists=False)
        return rendered


def _not_ready(rev: Revision | None) -> ApiError | None:
    """The operation's error when the revision it made failed (None if it made none or it
    is Ready)."""
    if rev is None or rev.ready:
        return None
    return ApiError(
        400,
        f"Revision '{rev.short}' is not ready and cannot serve traffic. {rev.message}",
        status="FAILED_PRECONDITION",
    )


def _note(err: ApiError | None) -> str:
    return f"failed: {err.message}" if err else ""


def failure_details(project: str, region: str, failure: DeployError) -> list[dict]:
    """The ErrorInfo Google sends with a quota refusal (none when the scenario says so)."""
    if failure.reason is None:
        return []
    info = quota_error_info("run.googleapis.com", project, failure.quota_id, region)
    info["reason"] = failure.reason
    return [info]
