"""Revisions that serve real HTTP, path-routed through the emulator (no DNS on loopback).

    {base_url}/run/{service}-{hash}-{region}.a.run.app/PATH          -> by the traffic split
    {base_url}/run/{tag}---{service}-{hash}-{region}.a.run.app/PATH  -> the tagged revision

Each revision gets its own instance of the sample page service (examples/page-service/app/
main.py, loaded by file path: it is the customer's code, not a package of ours), configured
from the revision's spec (GPU when it asks for nvidia.com/gpu and an accelerator), the
scenario's serving speed and matching revision faults, with a `log` that writes to the
emulator's Cloud Logging store. Requests are handed to it in-process over ASGI.

With a Docker daemon the revision's instance is its container (sandbox/engine), scaled as
Cloud Run scales it (run_autoscaling.py): to zero after idle, started again by the next request,
and a request beyond what its instances may take at once waits, then gets Google's 429.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from sandbox.emulator import gpu_instances, load_faults, run_autoscaling
from sandbox.emulator.core import SandboxState
from sandbox.emulator.invoker_iam import FORBIDDEN_PAGE, invoker_allowed
from sandbox.emulator.run_resources import Revision, Service, write_revision_log
from sandbox.emulator.run_revisions import oom_killed
from sandbox.emulator.run_store import RunStore
from sandbox.engine.revision_instances import container_store
from sandbox.scenario import LOAD_FAULTS

PAGE_APP = Path(__file__).resolve().parents[2] / "examples" / "page-service" / "app" / "main.py"
_HOP_HEADERS = {b"content-length", b"transfer-encoding", b"connection", b"keep-alive"}
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_module: ModuleType | None = None

NOT_FOUND_PAGE = (
    "<!DOCTYPE html><html lang=en><title>Error 404 (Not Found)!!1</title>"
    "<p><b>404.</b> <ins>That's an error.</ins><p>The requested URL was not found on this "
    "server. <ins>That's all we know.</ins></html>"
)
UNAVAILABLE_PAGE = (
    "<html><head><title>503 Service Unavailable</title></head><body><h1>Service Unavailable"
    "</h1><p>The service you requested is not available yet. Please try again in 30 seconds."
    "</p></body></html>"
)


def page_app_module() -> ModuleType:
    """The sample page service module, loaded once from its file."""
    global _module
    if _module is None:
        spec = importlib.util.spec_from_file_location("shipyard_page_service", PAGE_APP)
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot load the sample page service from {PAGE_APP}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it loads
        spec.loader.exec_module(module)
        _module = module
    return _module


async def _instance(
    state: SandboxState, store: RunStore, rev: Revision
) -> httpx.AsyncClient | None:
    """The revision's running instance (started on its first request); with a Docker daemon,
    its container (sandbox/engine; a cold start if it was scaled to zero), None when it cannot
    serve (killed by an OOM, or it did not start)."""
    if container_store(state) is not None:
        container = await run_autoscaling.running_instance(state, rev)
        if container is None:
            return None
        client = store.instances.get(rev.name)
        if client is None or str(client.base_url).rstrip("/") != container.url:
            client = httpx.AsyncClient(base_url=container.url, timeout=900)
            store.instances[rev.name] = client
        return client
    client = store.instances.get(rev.name)
    if client is None:
        module = page_app_module()
        serving = state.scenario.serving

        def log(severity: str, text: str) -> None:
            write_revision_log(state, rev, severity, text)

        settings = module.Settings(
            internal_token=rev.env.get("INTERNAL_TOKEN") or None,
            device=rev.device,
            gpu_ms=serving.gpu_ms,
            cpu_ms=serving.cpu_ms,
            service=rev.service.rsplit("/", 1)[-1],
            revision=rev.short,
            # never_ready and oom are the platform's (run_revisions), the load faults the
            # router's (load_faults.py), not the app's
            faults={
                f.fault: f.requests
                for f in rev.faults
                if f.fault not in ("never_ready", "oom", *LOAD_FAULTS)
            },
            log=log,
        )
        app = module.create_app(settings)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        client = httpx.AsyncClient(transport=transport, base_url="http://revision")
        store.instances[rev.name] = client
        state.calls["run.instance_started"] += 1
    return client


def register(app: FastAPI, state: SandboxState, store: RunStore) -> None:
    run_autoscaling.install(app, state)  # the idle reaper, with a Docker daemon

    @app.api_route("/run/{host}", methods=_METHODS)
    @app.api_route("/run/{host}/{path:path}", methods=_METHODS)
    async def serve(host: str, request: Request, path: str = "") -> Response:
        routed = store.route(host)
        if routed is None:
            return HTMLResponse(NOT_FOUND_PAGE, status_code=404)
        svc, rev = routed
        if not invoker_allowed(
            svc.spec, _audiences(store, svc), request.headers.get("authorization", "")
        ):
            return HTMLResponse(FORBIDDEN_PAGE.format(path="/" + path), status_code=403)
        started = time.perf_counter()
        refused = None
        if rev is None or not rev.ready:
            response: Response = HTMLResponse(UNAVAILABLE_PAGE, status_code=503)
        elif (refused := await run_autoscaling.admit(state, rev)) is not None:
            # Every instance the revision may have stayed busy (run_autoscaling.py).
            response = PlainTextResponse(refused, status_code=429)
        else:
            try:
                response, refused = await _admitted(state, store, rev, host, path, request)
            finally:
                await run_autoscaling.done(state, rev)
        if rev is not None:
            seconds = time.perf_counter() - started
            _request_log(state, rev, request, response, seconds, text=refused)
        return response


def _audiences(store: RunStore, svc: Service) -> set[str]:
    """The service's URLs an ID token may name: its own and each tag's, as the emulator serves
    them and as Google would print them (https://{host})."""
    tags = [""] + [s["tag"] for s in svc.statuses if s.get("tag")]
    return {url for tag in tags for url in (store.uri(svc, tag), f"https://{svc.host(tag)}")}


async def _admitted(
    state: SandboxState, store: RunStore, rev: Revision, host: str, path: str, request: Request
) -> tuple[Response, str | None]:
    """The answer to a request the revision's instances had room for, and the platform's reason
    when it refused it after all (no GPU within the quota)."""
    if (refused := gpu_instances.admit(store, rev)) is not None:
        # No GPU instance can start within the region's quota (gpu_instances.py).
        return PlainTextResponse(refused, status_code=503), refused
    try:
        number = load_faults.routed(rev)
        if load_faults.fails(rev, number):  # errors_under_load (load_faults.py)
            state.calls["run.load_fault.error"] += 1
            return PlainTextResponse(load_faults.INTERNAL_ERROR_BODY, status_code=500), None
        # In-process only: a container runs out of memory for real (sandbox/engine).
        in_process = container_store(state) is None
        if request.method == "POST" and in_process and oom_killed(state, rev):
            store.instances.pop(rev.name, None)  # the container was terminated
            return HTMLResponse(UNAVAILABLE_PAGE, status_code=503), None
        response, took = await _forward(state, store, rev, host, path, request)
        factor = load_faults.slowdown(rev, number)  # slow_under_load (load_faults.py)
        if factor > 1.0:
            state.calls["run.load_fault.slowed"] += 1
            await asyncio.sleep((factor - 1.0) * took)
        return response, None
    finally:
        gpu_instances.done(rev)


async def _forward(
    state: SandboxState, store: RunStore, rev: Revision, host: str, path: str, request: Request
) -> tuple[Response, float]:
    """The instance's answer, and how long the instance took to give it (seconds; a cold
    start not included)."""
    client = await _instance(state, store, rev)
    if client is None:
        return HTMLResponse(UNAVAILABLE_PAGE, status_code=503), 0.0
    headers = [(k, v) for k, v in request.headers.raw if k.lower() not in (b"host", *_HOP_HEADERS)]
    headers.append((b"host", host.encode()))
    body = await request.body()
    started = time.perf_counter()
    try:
        upstream = await client.request(
            request.method, "/" + path, params=request.url.query, headers=headers, content=body
        )
    except httpx.TransportError:  # the container died under the request (an OOM kill)
        return HTMLResponse(UNAVAILABLE_PAGE, status_code=503), time.perf_counter() - started
    took = time.perf_counter() - started
    response = Response(content=upstream.content, status_code=upstream.status_code)
    response.raw_headers = [
        (k, v) for k, v in upstream.headers.raw if k.lower() not in _HOP_HEADERS
    ] + [(b"content-length", str(len(upstream.content)).encode())]
    return response, took


def _request_log(
    state: SandboxState,
    rev: Revision,
    request: Request,
    response: Response,
    seconds: float,
    text: str | None = None,
) -> None:
    """The platform's request log line (run.googleapis.com/requests), with httpRequest; `text`:
    the platform's reason for refusing it (the entry's textPayload on Google)."""
    status = response.status_code
    severity = "ERROR" if status >= 500 else "WARNING" if status >= 400 else "INFO"
    entry = write_revision_log(
        state,
        rev,
        severity,
        text or f"{request.method} {status} {request.url.path}",
        stream="requests",
    )
    entry["httpRequest"] = {
        "requestMethod": request.method,
        "requestUrl": str(request.url),
        "status": status,
        "responseSize": response.headers.get("content-length", "0"),
        "userAgent": request.headers.get("user-agent", ""),
        "remoteIp": request.client.host if request.client else "",
        "latency": f"{seconds:.6f}s",
        "protocol": "HTTP/1.1",
    }
