"""Assemble the emulator: the API routers, the scenario's API faults, and the admin routes."""

from __future__ import annotations

import asyncio
import re

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from sandbox.emulator import build, logging_api, quotas, run
from sandbox.emulator.core import ApiError, SandboxState, error_response
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


def create_app(
    scenario: Scenario | None = None,
    registry_url: str | None = None,
    docker_host: str | None = None,
) -> FastAPI:
    app = FastAPI(
        title="Shipyard sandbox: Google Cloud API emulator", docs_url=None, redoc_url=None
    )
    state = SandboxState(
        scenario=scenario or Scenario(), registry_url=registry_url, docker_host=docker_host
    )
    app.state.sandbox = state

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.middleware("http")
    async def _scenario_faults(request: Request, call_next):
        api = api_of(request.url.path)
        if api is not None:
            state.api_requests[api] += 1
            behaviour = getattr(state.scenario.apis, api)
            if behaviour.latency_ms:
                await asyncio.sleep(behaviour.latency_ms / 1000)
            n = state.api_requests[api]
            failing = (behaviour.every_nth and n % behaviour.every_nth == 0) or (
                behaviour.error_rate and state.rng.random() < behaviour.error_rate
            )
            if failing:
                code = state.rng.choice(behaviour.error_codes)
                state.calls[f"fault.{api}"] += 1
                return error_response(
                    ApiError(code, f"sandbox: injected transient {code} on {api}")
                )
        return await call_next(request)

    for module in API_MODULES:
        module.register(app, state)

    _register_admin(app, state)
    return app


def _register_admin(app: FastAPI, state: SandboxState) -> None:
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

    @app.get("/_sandbox/logs")
    async def logs() -> dict:
        return {"entries": state.log_entries}
