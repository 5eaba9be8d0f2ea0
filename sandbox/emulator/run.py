"""Cloud Run Admin v2 over REST, as `google.cloud.run_v2` (transport="rest") calls it.

Services (create/get/list/update/delete), revisions (list/get/delete), long-running
operations at `projects/{p}/locations/{r}/operations/{id}`, plus the sandbox's admin route
`GET /_sandbox/traffic-history?service=NAME`. The model lives in run_store.py; revisions
serve HTTP through revisions_http.py (`/run/{host}/...`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

from fastapi import FastAPI, Request

from sandbox.emulator import invoker_iam, revisions_http
from sandbox.emulator.core import (
    ApiError,
    Operation,
    SandboxState,
    duration_s,
    json_body,
    paged,
    query_flag,
)
from sandbox.emulator.run_resources import TYPE_PREFIX, Reconcile, Service
from sandbox.emulator.run_store import RunStore

_SERVICE_ID = re.compile(r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$")
V2 = "/v2/projects/{project}/locations/{region}"


def register(app: FastAPI, state: SandboxState) -> None:
    """Add Cloud Run Admin v2, the revision URLs and the traffic-history admin route."""
    store = RunStore(state)
    state.stores["run"] = store

    def start(
        project: str,
        region: str,
        finish,
        metadata: dict,
        delay_ms: int = 0,
        decided: Callable[[], bool] | None = None,
    ) -> Operation:
        name = f"projects/{project}/locations/{region}/operations/{state.new_id()}"
        return state.start_operation(
            name, finish, metadata=metadata, delay_ms=delay_ms, decided=decided
        )

    def service_op(svc: Service, outcome: Reconcile, stored: bool, delay_ms: int = 0) -> dict:
        """The create/update's operation: answered at once, done once `outcome` is decided
        (a new revision's container may still be starting: the service reconciles)."""
        metadata = {"@type": TYPE_PREFIX + "Service", **store.render_service(svc)}

        def finish() -> dict:
            if outcome.error is not None:
                raise outcome.error
            current = store.services.get(svc.name)
            body = store.render_service(current) if current is not None else metadata
            return {**body, "@type": TYPE_PREFIX + "Service"}

        op = start(svc.project, svc.region, finish, metadata, delay_ms, lambda: outcome.decided)
        outcome.listeners.append(op.decision_made)
        if stored:
            svc.pending_op = op.name
        return op.to_json()

    @app.post(V2 + "/services")
    async def create_service(project: str, region: str, request: Request) -> dict:
        state.calls["run.create_service"] += 1
        service_id = request.query_params.get("serviceId", "")
        if not _SERVICE_ID.match(service_id):
            raise ApiError(
                400,
                f"serviceId: '{service_id}' is not a valid service name: use 1-49 lowercase "
                "letters, digits or '-', starting with a letter and not ending with '-'.",
            )
        name = f"projects/{project}/locations/{region}/services/{service_id}"
        svc, outcome = store.apply(
            name,
            await json_body(request),
            creating=True,
            validate_only=query_flag(request, "validateOnly"),
        )
        return service_op(svc, outcome, stored=store.services.get(name) is svc)

    @app.get(V2 + "/services")
    async def list_services(project: str, region: str, request: Request) -> dict:
        state.calls["run.list_services"] += 1
        prefix = f"projects/{project}/locations/{region}/services/"
        names = sorted(n for n in store.services if region == "-" or n.startswith(prefix))
        if region == "-":
            names = [n for n in names if n.startswith(f"projects/{project}/")]
        return paged(names, request, "services", lambda n: store.render_service(store.services[n]))

    @app.get(V2 + "/services/{service}")
    async def get_service(project: str, region: str, service: str) -> dict:
        state.calls["run.get_service"] += 1
        name = f"projects/{project}/locations/{region}/services/{service}"
        return store.render_service(store.get_service(name))

    @app.patch(V2 + "/services/{service}")
    async def update_service(project: str, region: str, service: str, request: Request) -> dict:
        state.calls["run.update_service"] += 1
        name = f"projects/{project}/locations/{region}/services/{service}"
        mask_text = request.query_params.get("updateMask", "")
        mask = [p for p in mask_text.split(",") if p] or None
        revisions_before = state.calls["run.revision_created"]
        svc, outcome = store.apply(
            name,
            await json_body(request),
            creating=False,
            update_mask=mask,
            allow_missing=query_flag(request, "allowMissing"),
            validate_only=query_flag(request, "validateOnly"),
        )
        traffic_only = state.calls["run.revision_created"] == revisions_before
        delay = state.scenario.operations.traffic_update_ms if traffic_only else 0
        return service_op(svc, outcome, stored=store.services.get(name) is svc, delay_ms=delay)

    @app.delete(V2 + "/services/{service}")
    async def delete_service(project: str, region: str, service: str, request: Request) -> dict:
        state.calls["run.delete_service"] += 1
        name = f"projects/{project}/locations/{region}/services/{service}"
        etag = request.query_params.get("etag", "")
        if query_flag(request, "validateOnly"):
            rendered = store.render_service(store.get_service(name))
        else:
            rendered = store.delete_service(name, etag=etag)
        body = {**rendered, "@type": TYPE_PREFIX + "Service"}
        return start(project, region, lambda: body, body).to_json()

    @app.get(V2 + "/services/{service}/revisions")
    async def list_revisions(project: str, region: str, service: str, request: Request) -> dict:
        state.calls["run.list_revisions"] += 1
        parent = f"projects/{project}/locations/{region}/services/{service}"
        if service != "-":
            store.get_service(parent)
            revs = store.service_revisions(parent)
        else:
            prefix = f"projects/{project}/locations/{region}/services/"
            revs = [r for r in store.revisions.values() if r.service.startswith(prefix)]
        names = [r.name for r in reversed(revs)]  # newest first, like Google
        return paged(names, request, "revisions", lambda n: store.revisions[n].render())

    @app.get(V2 + "/services/{service}/revisions/{revision}")
    async def get_revision(project: str, region: str, service: str, revision: str) -> dict:
        state.calls["run.get_revision"] += 1
        name = f"projects/{project}/locations/{region}/services/{service}/revisions/{revision}"
        return store.get_revision(name).render()

    @app.delete(V2 + "/services/{service}/revisions/{revision}")
    async def delete_revision(
        project: str, region: str, service: str, revision: str, request: Request
    ) -> dict:
        state.calls["run.delete_revision"] += 1
        name = f"projects/{project}/locations/{region}/services/{service}/revisions/{revision}"
        if query_flag(request, "validateOnly"):
            rev = store.get_revision(name)
        else:
            rev = store.delete_revision(name)
        body = {**rev.render(), "@type": TYPE_PREFIX + "Revision"}
        return start(project, region, lambda: body, body).to_json()

    @app.get(V2 + "/operations")
    async def list_operations(project: str, region: str, request: Request) -> dict:
        prefix = f"projects/{project}/locations/{region}/operations/"
        names = [n for n in state.operations if n.startswith(prefix)]
        return paged(names, request, "operations", lambda n: state.operations[n].to_json())

    @app.get(V2 + "/operations/{operation}")
    async def get_operation(project: str, region: str, operation: str) -> dict:
        state.calls["run.get_operation"] += 1
        return _operation(state, project, region, operation).poll()

    @app.post(V2 + "/operations/{operation}:wait")
    async def wait_operation(project: str, region: str, operation: str, request: Request) -> dict:
        """ "Waits until the specified long-running operation is done or reaches at most a
        specified timeout, returning the latest state." (google/longrunning/operations.proto,
        WaitOperation); without a timeout the sandbox waits at most 60 s."""
        op = _operation(state, project, region, operation)
        timeout = duration_s((await json_body(request)).get("timeout"), 60.0, "timeout")
        deadline = time.monotonic() + timeout
        while not op.is_decided() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if op.is_decided():
            op.complete()
        return op.to_json()

    @app.delete(V2 + "/operations/{operation}")
    async def delete_operation(project: str, region: str, operation: str) -> dict:
        op = _operation(state, project, region, operation)
        state.operations.pop(op.name, None)
        return {}

    @app.get("/_sandbox/traffic-history")
    async def traffic_history(service: str | None = None) -> dict:
        """Every traffic state of a service (or of all), in time order (see sandbox/invariants.py)."""
        return {"history": store.traffic_history(service)}

    revisions_http.register(app, state, store)
    invoker_iam.register(app)


def _operation(state: SandboxState, project: str, region: str, op_id: str) -> Operation:
    name = f"projects/{project}/locations/{region}/operations/{op_id}"
    op = state.operations.get(name)
    if op is None:
        raise ApiError(404, f"Operation '{name}' not found.")
    return op
