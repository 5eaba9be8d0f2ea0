"""Assemble the emulator: the API routers, the scenario's API faults, and the admin routes."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

from sandbox.emulator import build, logging_api, quotas, run
from sandbox.emulator.core import ApiError, SandboxState, error_response, rate_error_info
from sandbox.emulator.secret_store import SecretFile
from sandbox.scenario import Scenario, ScenarioError, load_scenario, parse_scenario

# Which emulated API a request belongs to, by path (for latency and transient faults).
_API_BY_PATH = [
    ("run", re.compile(r"^/v2/projects/[^/]+/locations/[^/]+/(services|operations)")),
    ("logging", re.compile(r"^/v2/entries")),
    ("build", re.compile(r"^/v1/(projects/[^/]+/(locations/[^/]+/)?builds|operations/build/)")),
    (
        "quotas",
        re.compile(
            r"^/v1/projects/[^/]+/locations/global/(services/[^/]+/quotaInfos|quotaPreferences)"
        ),
    ),
]

API_MODULES = (run, quotas, build, logging_api)


def api_of(path: str) -> str | None:
    for api, pattern in _API_BY_PATH:
        if pattern.match(path):
            return api
    return None


_API_SERVICE = {
    "run": "run.googleapis.com",
    "build": "cloudbuild.googleapis.com",
    "quotas": "cloudquotas.googleapis.com",
    "logging": "logging.googleapis.com",
}

# Google's front end answers a 502 with an HTML page, not the JSON error envelope.
_GFE_502 = (
    "<!DOCTYPE html><html lang=en><meta charset=utf-8><title>Error 502 (Server Error)!!1"
    "</title><p><b>502.</b> <ins>That's an error.</ins><p>The server encountered a temporary "
    "error and could not complete your request.<p>Please try again in 30 seconds. "
    "<ins>That's all we know.</ins></html>"
)


class DroppedConnection(Response):
    """Headers promise a body that never fully comes: the server closes the connection
    mid-answer (clients see a reset / IncompleteRead, requests' ChunkedEncodingError)."""

    def __init__(self) -> None:
        super().__init__()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"name": "proj', "more_body": True})
        raise ConnectionResetError("sandbox: injected connection reset")


def injected_fault(fault: int | str, api: str) -> Response:
    """One transient fault, shaped as Google sends it (see ApiBehaviour)."""
    if fault == "reset":
        return DroppedConnection()
    if fault == 502:
        return HTMLResponse(_GFE_502, status_code=502)
    code = int(fault)
    if code == 429:
        return error_response(
            ApiError(
                429,
                f"Quota exceeded for quota metric 'Requests' and limit 'Requests per minute' "
                f"of service '{_API_SERVICE[api]}'.",
                details=[rate_error_info(_API_SERVICE[api])],
            )
        )
    if code == 504:
        return error_response(ApiError(504, "Deadline expired before operation could complete."))
    return error_response(ApiError(code, f"sandbox: injected transient {code} on {api}"))


def create_app(
    scenario: Scenario | None = None,
    registry_url: str | None = None,
    docker_host: str | None = None,
    state_dir: Path | None = None,
) -> FastAPI:
    """The emulator. `state_dir`: where what must outlive a restart is kept (the Secret Manager
    entries, secret_store.py); None keeps everything in memory."""
    app = FastAPI(
        title="Shipyard sandbox: Google Cloud API emulator", docs_url=None, redoc_url=None
    )
    state = SandboxState(
        scenario=scenario or Scenario(), registry_url=registry_url, docker_host=docker_host
    )
    app.state.sandbox = state
    secret_file = SecretFile(state_dir) if state_dir is not None else None
    if secret_file is not None:
        state.added_secrets.update(secret_file.load())

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.middleware("http")
    async def _scenario_faults(request: Request, call_next):
        api = api_of(request.url.path)
        behaviour: Any = getattr(state.scenario.apis, api) if api is not None else None
        if api is not None and behaviour.only_path in request.url.path:
            state.api_requests[api] += 1
            if behaviour.latency_ms:
                await asyncio.sleep(behaviour.latency_ms / 1000)
            n = state.api_requests[api]
            failing = (
                (behaviour.every_nth and n % behaviour.every_nth == 0)
                or (behaviour.first_n and n <= behaviour.first_n)
                or (behaviour.error_rate and state.rng.random() < behaviour.error_rate)
            )
            if failing:
                fault = state.rng.choice(behaviour.error_codes)
                state.calls[f"fault.{api}"] += 1
                if fault == "lost_answer":
                    await call_next(request)  # Google did it; the answer never arrives
                    return DroppedConnection()
                return injected_fault(fault, api)
        return await call_next(request)

    for module in API_MODULES:
        module.register(app, state)

    _register_admin(app, state, secret_file)
    return app


def _register_admin(app: FastAPI, state: SandboxState, secret_file: SecretFile | None) -> None:
    """/_sandbox/*: never faulted; lets the CLI, tests and benches inspect and steer the sandbox."""

    @app.get("/_sandbox/health")
    async def health() -> dict:
        return {"ok": True, "scenario": state.scenario.name, "registry": state.registry_url}

    @app.get("/_sandbox/calls")
    async def calls() -> dict:
        return dict(state.calls)

    @app.post("/_sandbox/reset")
    async def reset(request: Request) -> dict:
        """Forget every resource. Body (optional): {"scenario": NAME_OR_PATH} or {"scenario_data": {...}}."""
        body = await request.json() if await request.body() else {}
        try:
            if "scenario_data" in body:
                scenario = parse_scenario(body["scenario_data"], "scenario_data")
            elif body.get("scenario"):
                scenario = load_scenario(body["scenario"])
            else:
                scenario = None
        except ScenarioError as exc:
            raise ApiError(400, str(exc)) from None
        state.reset(scenario)
        return {"ok": True, "scenario": state.scenario.name}

    @app.put("/_sandbox/secrets/{name}")
    async def put_secret(name: str, request: Request) -> dict:
        """Add (or replace) a Secret Manager entry: body {"value": "..."}. Answers its digest."""
        body = await request.json()
        value = body.get("value") if isinstance(body, dict) else None
        if not isinstance(value, str) or not value:
            raise ApiError(400, 'body must be {"value": "<non-empty string>"}')
        state.added_secrets[name] = value
        if secret_file is not None:  # kept across `sandbox down` / `up`
            secret_file.save(state.added_secrets)
        return {"name": name, "sha256": _digest(value)}

    @app.get("/_sandbox/secrets/{name}")
    async def get_secret(name: str) -> dict:
        """Whether a secret exists, and the sha256 of its value (never the value)."""
        value = state.secret(name)
        if value is None:
            raise ApiError(404, f"Secret [{name}] not found or has no versions.")
        return {"name": name, "sha256": _digest(value)}

    @app.get("/_sandbox/logs")
    async def logs() -> dict:
        return {"entries": state.log_entries}


def _digest(value: str) -> str:
    import hashlib

    return hashlib.sha256(value.encode()).hexdigest()
