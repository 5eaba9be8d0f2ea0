"""Cloud Build v1 over REST, as `cloudbuild_v1.CloudBuildClient(transport="rest")` calls it.

Routes: create (`POST /v1/projects/{p}/builds`, also under `locations/{l}`), get, list (newest
first, `pageSize`/`pageToken`, a `filter` on status/id/tags), cancel (`…/builds/{id}:cancel`),
and the build's long-running operation `operations/build/{p}/{base64 id}` (GET and :cancel).

A build really runs, asynchronously, in the emulator's event loop: QUEUED (scenario
`builds.queue_ms`) → WORKING (source fetched with git: `gitSource` url + revision, `dir`;
steps run in order) → SUCCESS | FAILURE | TIMEOUT | CANCELLED | INTERNAL_ERROR. The operation
is done once the build is terminal: `response` is the Build (with its `@type`) on SUCCESS, else
`error` as Cloud Build reports it ("Build failed; check build logs for details", code 2).

Steps the executor understands: `gcr.io/cloud-builders/docker` with `buildx create|use|version|
ls|inspect` (a no-op: the sandbox's builder is always there) and `buildx build …`: executed
for real on the sandbox's Docker daemon when it runs (sandbox/engine/docker_build.py: every RUN
runs, with its real output), else by the in-process stand-in (sandbox/buildkit/). Anything else fails the build at that step, with `failureInfo`
(USER_BUILD_STEP) and a `statusDetail` naming the step and the problem, as Google fails a broken
step. Every log line goes to the Cloud Logging store: resource type "build", labels build_id and
project_id, log `projects/{p}/logs/cloudbuild`, entry label `build_step` ("Step #1").

What a create may carry and what it is refused for (400 INVALID_ARGUMENT like Google) is
build_request.py. Counted as `build.create` (a list as `build.list`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from sandbox.build_scenario import BuildScenario, parse_build_scenario
from sandbox.buildkit import Builder, BuildFailed, BuildPolicy, parse_buildx_build
from sandbox.emulator.build_request import (
    DEFAULT_TIMEOUT_S,
    build_timeout_s,
    normalise,
    validate,
)
from sandbox.emulator.core import (
    ApiError,
    Operation,
    SandboxState,
    now_rfc3339,
    paged,
)
from sandbox.engine.daemon import Engine
from sandbox.engine.docker_build import engine_build
from sandbox.oci import SandboxRegistry

BUILD_TYPE = "type.googleapis.com/google.devtools.cloudbuild.v1.Build"
METADATA_TYPE = "type.googleapis.com/google.devtools.cloudbuild.v1.BuildOperationMetadata"
TERMINAL = {"SUCCESS", "FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"}
DOCKER_BUILDER = "gcr.io/cloud-builders/docker"
# How Cloud Build ends the operation of a build that did not succeed (google.rpc code, message).
OPERATION_ERRORS = {
    "FAILURE": (2, "Build failed; check build logs for details"),
    "INTERNAL_ERROR": (13, "Build failed due to an internal error"),
    "TIMEOUT": (4, "Build timed out"),
    "CANCELLED": (1, "Build was cancelled"),
    "EXPIRED": (4, "Build expired"),
}


class StepFailure(Exception):
    """A Cloud Build step failed: `detail` is what statusDetail and failureInfo say."""

    def __init__(self, detail: str, kind: str = "USER_BUILD_STEP") -> None:
        super().__init__(detail)
        self.detail = detail
        self.kind = kind


class BuildStore:
    def __init__(self) -> None:
        self.builds: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self.history: dict[str, list[str]] = {}
        # Scenario `builds.hold`: builds wait QUEUED until this is set (/_sandbox/builds/release).
        self.released = asyncio.Event()

    def reset(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()
        self.builds.clear()
        self.history.clear()
        self.released = asyncio.Event()

    def set_status(self, build: dict[str, Any], status: str) -> None:
        build["status"] = status
        self.history.setdefault(build["id"], []).append(status)


class BuildOperation(Operation):
    """The operation of one build: done exactly when the build is terminal."""

    def __init__(self, name: str, store: BuildStore, build_id: str) -> None:
        super().__init__(name=name, finish=dict)
        self.store = store
        self.build_id = build_id

    def poll(self) -> dict:
        return self.to_json()

    def to_json(self) -> dict:
        build = self.store.builds[self.build_id]
        body: dict[str, Any] = {
            "name": self.name,
            "metadata": {"@type": METADATA_TYPE, "build": public(build)},
            "done": build["status"] in TERMINAL,
        }
        if body["done"]:
            if build["status"] == "SUCCESS":
                body["response"] = {"@type": BUILD_TYPE, **public(build)}
            else:
                code, message = OPERATION_ERRORS[build["status"]]
                body["error"] = {"code": code, "message": message}
        return body


def public(build: dict[str, Any]) -> dict[str, Any]:
    """The Build as the API shows it (without the sandbox's own `_` fields)."""
    out = {k: v for k, v in build.items() if not k.startswith("_")}
    out["steps"] = [{k: v for k, v in s.items() if not k.startswith("_")} for s in build["steps"]]
    return out


def register(app: FastAPI, state: SandboxState) -> None:
    """Add Cloud Build v1: builds (create/get/list/cancel) as long-running operations."""
    store = BuildStore()
    state.stores["build"] = store

    def scenario() -> BuildScenario:
        try:
            return parse_build_scenario(state.scenario.builds)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None

    def find(project: str, build_id: str) -> dict[str, Any]:
        build = store.builds.get(build_id)
        if build is None or build["projectId"] != project:
            raise ApiError(404, f"Build {build_id!r} not found in project {project!r}")
        return build

    def step_label(build: dict[str, Any], step: int) -> str:
        """`Step #0 - "buildx"` (the step's id), or `Step #0` for a step without one."""
        step_id = (build["steps"][step].get("id") or "") if step < len(build["steps"]) else ""
        return f'Step #{step} - "{step_id}"' if step_id else f"Step #{step}"

    def log(
        build: dict[str, Any],
        text: str,
        step: int | None = None,
        severity: str = "INFO",
        *,
        prefixed: bool = True,
    ):
        """One line of the build's log as Cloud Build writes it: a step's output prefixed
        `Step #0 - "buildx": `, between `Starting Step #0 - "buildx"` and `Finished ...` (as
        real build logs quoted in public repositories read: 'Starting Step #0 - "Build"',
        'Step #0 - "Build": Already have image ...'); it reaches Cloud Logging
        `builds.log_delay_ms` later (its receiveTimestamp; the Logging API lists an entry only
        once received)."""
        if step is not None and prefixed:
            text = f"{step_label(build, step)}: {text}"
        entry = state.write_log(
            text,
            severity=severity,
            resource={
                "type": "build",
                "labels": {"build_id": build["id"], "project_id": build["projectId"]},
            },
            log_name=f"projects/{build['projectId']}/logs/cloudbuild",
            labels={"build_step": f"Step #{step}"} if step is not None else None,
        )
        delay_ms = scenario().log_delay_ms
        if delay_ms:
            received = dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=delay_ms)
            entry["receiveTimestamp"] = received.isoformat().replace("+00:00", "Z")

    async def create(project: str, request: Request, location: str = "global") -> dict:
        state.calls["build.create"] += 1
        raw = await request.body()
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise ApiError(400, "Invalid JSON payload received.") from None
        build = normalise(body)
        policy = scenario()
        validate(build, policy)
        build_id = str(uuid.uuid4())
        build.update(
            id=build_id,
            projectId=project,
            name=f"projects/{project}/locations/{location}/builds/{build_id}",
            createTime=now_rfc3339(),
            logUrl=f"https://console.cloud.google.com/cloud-build/builds/{build_id}?project={project}",
            timeout=build.get("timeout") or f"{DEFAULT_TIMEOUT_S}s",
        )
        for step in build["steps"]:
            step["status"] = "QUEUED"
        store.builds[build_id] = build
        store.set_status(build, "QUEUED")
        op_id = base64.b64encode(build_id.encode()).decode().rstrip("=")
        op_name = f"operations/build/{project}/{op_id}"
        op = BuildOperation(op_name, store, build_id)
        state.operations[op_name] = op
        build["_operation"] = op_name
        store.tasks[build_id] = asyncio.get_running_loop().create_task(
            execute(build, policy), name=f"build-{build_id}"
        )
        return op.to_json()

    async def execute(build: dict[str, Any], policy: BuildScenario) -> None:
        workspace = Path(tempfile.mkdtemp(prefix=f"shipyard-build-{build['id']}-"))
        started = time.monotonic()
        try:
            await asyncio.sleep(policy.queue_ms / 1000)
            if policy.hold:
                await store.released.wait()
            store.set_status(build, "WORKING")
            build["startTime"] = now_rfc3339()
            timeout = build_timeout_s(build.get("timeout"), DEFAULT_TIMEOUT_S)
            async with asyncio.timeout(timeout):
                await run_build(build, workspace, policy)
            store.set_status(build, "SUCCESS")
            log(build, "DONE")
        except asyncio.CancelledError:
            mark_steps(build, "CANCELLED")
            store.set_status(build, "CANCELLED")
            build["statusDetail"] = "Build was cancelled"
            log(build, "CANCELLED", severity="WARNING")
        except TimeoutError:
            mark_steps(build, "TIMEOUT")
            store.set_status(build, "TIMEOUT")
            build["statusDetail"] = f"Build timed out after {build['timeout']}"
            log(build, "TIMEOUT", severity="ERROR")
        except StepFailure as exc:
            store.set_status(build, "FAILURE")
            build["statusDetail"] = exc.detail
            build["failureInfo"] = {"type": exc.kind, "detail": exc.detail}
            log(build, f"ERROR: {exc.detail}", severity="ERROR")
        except Exception as exc:  # noqa: BLE001 - any bug is the build's INTERNAL_ERROR, not the loop's end
            store.set_status(build, "INTERNAL_ERROR")
            build["statusDetail"] = f"internal error: {type(exc).__name__}: {exc}"
            log(build, build["statusDetail"], severity="ERROR")
        finally:
            build["finishTime"] = now_rfc3339()
            build.setdefault("timing", {})["BUILD"] = {
                "startTime": build.get("startTime", build["createTime"]),
                "endTime": build["finishTime"],
            }
            build["_seconds"] = round(time.monotonic() - started, 3)
            store.tasks.pop(build["id"], None)
            await asyncio.to_thread(shutil.rmtree, workspace, True)

    def mark_steps(build: dict[str, Any], status: str) -> None:
        for step in build["steps"]:
            if step.get("status") in ("QUEUED", "WORKING"):
                step["status"] = status if step["status"] == "WORKING" else "CANCELLED"

    async def fetch_source(build: dict[str, Any], workspace: Path) -> Path:
        source = build["source"]
        if "storageSource" in source:
            raise StepFailure(
                "fetching source: storageSource is not available in the sandbox (no Cloud Storage "
                "emulator); use source.gitSource",
                "FETCH_SOURCE_FAILED",
            )
        git = source["gitSource"]
        url, revision = git["url"], git.get("revision") or "HEAD"
        log(build, f"Fetching {url} {revision}")
        commands = [
            ["git", "init", "-q", str(workspace)],
            ["git", "-C", str(workspace), "fetch", "-q", "--depth", "1", url, revision],
            ["git", "-C", str(workspace), "checkout", "-q", "FETCH_HEAD"],
        ]
        for args in commands:
            proc = await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                text = out.decode(errors="replace").strip()
                raise StepFailure(
                    f"fetching source: git {args[3] if len(args) > 3 else args[1]} of {url} at "
                    f"{revision} failed: {text[-500:]}",
                    "FETCH_SOURCE_FAILED",
                )
        sha = await asyncio.create_subprocess_exec(
            "git", "-C", str(workspace), "rev-parse", "HEAD", stdout=asyncio.subprocess.PIPE
        )
        commit = (await sha.communicate())[0].decode().strip()
        build.setdefault("sourceProvenance", {})["resolvedGitSource"] = {**git, "revision": commit}
        log(build, f"HEAD is now at {commit[:7]}")
        root = (workspace / git.get("dir", "")).resolve()
        if not root.is_dir() or workspace.resolve() not in (root, *root.parents):
            raise StepFailure(
                f"fetching source: source.gitSource.dir {git.get('dir')!r} is not a directory of "
                f"{url} at {revision}",
                "FETCH_SOURCE_FAILED",
            )
        return root

    async def run_build(build: dict[str, Any], workspace: Path, policy: BuildScenario) -> None:
        log(build, f'starting build "{build["id"]}"')
        log(build, "")
        log(build, "FETCHSOURCE")
        root = await fetch_source(build, workspace)
        log(build, "BUILD")
        images: list[dict[str, str]] = []
        for i, step in enumerate(build["steps"]):
            step["status"] = "WORKING"
            step["timing"] = {"startTime": now_rfc3339()}
            log(build, f"Starting {step_label(build, i)}", i, prefixed=False)
            try:
                images += await run_step(build, i, step, root, policy)
            except StepFailure:
                step["status"] = "FAILURE"
                step["exitCode"] = policy.exit_code
                raise
            finally:
                step["timing"]["endTime"] = now_rfc3339()
            step["status"] = "SUCCESS"
            log(build, f"Finished {step_label(build, i)}", i, prefixed=False)
        log(build, "PUSH")
        if images:
            build["results"] = {
                "images": images,
                "buildStepImages": [""] * len(build["steps"]),
            }

    async def run_step(
        build: dict[str, Any], i: int, step: dict[str, Any], root: Path, policy: BuildScenario
    ) -> list[dict[str, str]]:
        name = step["name"]
        args = list(step.get("args") or [])

        def refuse(problem: str) -> StepFailure:
            log(build, f"ERROR: {problem}", i, "ERROR")
            return StepFailure(f'Build step failure: build step {i} "{name}" failed: {problem}')

        if name.split("@")[0].split(":")[0] != DOCKER_BUILDER:
            raise refuse(
                f"the sandbox's Cloud Build runs only {DOCKER_BUILDER} steps with `buildx` "
                "arguments"
            )
        if step.get("entrypoint") and step["entrypoint"] != "docker":
            raise refuse(f"entrypoint {step['entrypoint']!r} is not supported by the sandbox")
        if args[:1] != ["buildx"] or len(args) < 2:
            raise refuse(
                f"`docker {' '.join(args[:2])}` is not supported by the sandbox: use "
                "`docker buildx build …`"
            )
        if args[1] in ("create", "use", "version", "ls", "inspect", "rm"):
            log(build, "shipyard", i)
            return []
        if args[1] != "build":
            raise refuse(f"`docker buildx {args[1]}` is not supported by the sandbox")
        cwd = (root / step.get("dir", "")).resolve()

        def emit(line: str) -> None:
            log(build, line, i)

        try:
            buildx = parse_buildx_build(args[2:])
        except BuildFailed as exc:
            raise refuse(exc.message) from None
        if not state.registry_url:
            raise refuse(
                "the sandbox runs without a registry (start it with `shipyard sandbox up`)"
            )
        if state.docker_host:
            try:
                output = await engine_build(Engine(state.docker_host), cwd, buildx, emit)
            except BuildFailed as exc:
                log(build, f"ERROR: {exc.message}", i, "ERROR")
                raise StepFailure(
                    f'Build step failure: build step {i} "{name}" failed: step exited with '
                    "non-zero status: 1"
                ) from None
            step["_steps"] = output.steps
            return output.images
        registry = SandboxRegistry(state.registry_url)
        bk_policy = BuildPolicy(
            fail_step=policy.fail_step,
            message=policy.message,
            exit_code=policy.exit_code,
            step_delay_s=policy.step_delay_ms / 1000,
        )
        try:
            output = await Builder(registry, cwd, buildx, emit, bk_policy).run()
        except BuildFailed:
            raise StepFailure(
                f'Build step failure: build step {i} "{name}" failed: step exited with non-zero '
                f"status: {policy.exit_code}"
            ) from None
        finally:
            await registry.aclose()
        step["_steps"] = output.steps
        return output.images

    @app.post("/v1/projects/{project}/builds")
    async def create_build(project: str, request: Request) -> dict:
        return await create(project, request)

    @app.post("/v1/projects/{project}/locations/{location}/builds")
    async def create_build_loc(project: str, location: str, request: Request) -> dict:
        return await create(project, request, location)

    @app.get("/v1/projects/{project}/builds/{build_id}")
    async def get_build(project: str, build_id: str) -> dict:
        return public(find(project, build_id))

    @app.get("/v1/projects/{project}/locations/{location}/builds/{build_id}")
    async def get_build_loc(project: str, location: str, build_id: str) -> dict:
        return public(find(project, build_id))

    async def cancel(project: str, build_id: str) -> dict:
        build = find(project, build_id)
        state.calls["build.cancel"] += 1
        task = store.tasks.get(build_id)
        if build["status"] in TERMINAL or task is None:
            return public(build)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), timeout=5)
        return public(build)

    @app.post("/v1/projects/{project}/builds/{build_id}:cancel")
    async def cancel_build(project: str, build_id: str) -> dict:
        return await cancel(project, build_id)

    @app.post("/v1/projects/{project}/locations/{location}/builds/{build_id}:cancel")
    async def cancel_build_loc(project: str, location: str, build_id: str) -> dict:
        return await cancel(project, build_id)

    def list_for(project: str, request: Request) -> dict:
        state.calls["build.list"] += 1
        params = request.query_params
        builds = [b for b in store.builds.values() if b["projectId"] == project]
        builds.sort(key=lambda b: b["createTime"], reverse=True)
        text = (params.get("filter") or "").strip()
        if text:
            field, sep, value = text.partition("=")
            field, value = field.strip(), value.strip().strip('"')
            if not sep or field not in ("status", "id", "tags"):
                raise ApiError(
                    400, f'filter {text!r} is not supported: use status="…", id="…" or tags="…"'
                )
            if field == "tags":
                builds = [b for b in builds if value in (b.get("tags") or [])]
            else:
                builds = [b for b in builds if b.get(field) == value]
        return paged(builds, request, "builds", public, default_size=50)

    @app.post("/_sandbox/builds/release")
    async def release_builds() -> dict:
        """Let the builds held by the scenario's `builds.hold` go on (and later ones run through)."""
        store.released.set()
        return {"held": sum(1 for b in store.builds.values() if b["status"] == "QUEUED")}

    @app.get("/v1/projects/{project}/builds")
    async def list_builds(project: str, request: Request) -> dict:
        return list_for(project, request)

    @app.get("/v1/projects/{project}/locations/{location}/builds")
    async def list_builds_loc(project: str, location: str, request: Request) -> dict:
        return list_for(project, request)

    def operation(name: str) -> BuildOperation:
        op = state.operations.get(name)
        if not isinstance(op, BuildOperation):
            raise ApiError(404, f"Operation {name!r} not found")
        return op

    @app.get("/v1/operations/build/{project}/{op_id}")
    async def get_operation(project: str, op_id: str) -> dict:
        return operation(f"operations/build/{project}/{op_id}").poll()

    @app.post("/v1/operations/build/{project}/{op_id}:cancel")
    async def cancel_operation(project: str, op_id: str) -> dict:
        op = operation(f"operations/build/{project}/{op_id}")
        await cancel(project, op.build_id)
        return {}

    @app.get("/_sandbox/builds")
    async def sandbox_builds() -> dict:
        """Every build's status history and executed BuildKit steps (for tests and the demo)."""
        return {
            build_id: {
                "status": b["status"],
                "history": store.history.get(build_id, []),
                "steps": [s.get("_steps", []) for s in b["steps"]],
                "seconds": b.get("_seconds"),
            }
            for build_id, b in store.builds.items()
        }
