"""Cloud Run revision lifecycle in the emulator: whether a deploy fails (the scenario's
deploy errors, quota shortfalls), how a revision is created (name, device, faults, resolved
secrets, Ready or not and why; with a Docker daemon it reconciles while its container starts,
in the background) and deleted. How a revision's instance serves requests is
revisions_http.py.
"""

from __future__ import annotations

import asyncio
import copy
import string
import uuid
from collections.abc import Callable

from sandbox.emulator import gpu_instances
from sandbox.emulator.core import ApiError, SandboxState, now_rfc3339
from sandbox.emulator.run_resources import Revision, Service, container_name, write_revision_log
from sandbox.emulator.run_templates import (
    parse_cpu,
    parse_memory_gib,
    startup_probe,
    template_device,
    template_gpus,
    template_limits,
)
from sandbox.emulator.run_traffic import TrafficRules
from sandbox.engine.revision_instances import container_store, start_revision_container
from sandbox.scenario import (
    EXIT_LINE,
    GPU_QUOTA_MESSAGE,
    GPU_ZONAL_MESSAGE,
    STARTUP_FAULTS,
    DeployError,
    missing_dependency_lines,
)

# Google's text (octo-sts/app#1005, transparency-dev/tesseract#413: PORT is the container port).
NOT_READY_MESSAGE = (
    "The user-provided container failed to start and listen on the port defined provided by "
    "the PORT={port} environment variable within the allocated timeout. This can happen when "
    "the container port is misconfigured or if the timeout is too short. The health check "
    "timeout can be extended. Logs for this revision might contain more information."
)
CPU_QUOTA_MESSAGE = "Quota exceeded for total allowable CPU per project per region."
MEMORY_QUOTA_MESSAGE = "Quota exceeded for total allowable memory per project per region."


class RevisionLifecycle(TrafficRules):
    """Deploy failures, revision creation and deletion."""

    def _deploy_failure(
        self, project: str, region: str, template: dict, *, creating: bool = False
    ) -> DeployError | None:
        """The scenario's deploy error or quota shortfall for this template, if any.

        Where a quota shortfall shows (scenario `quota_where`, default as Google): an update
        over the GPU quota is accepted and its revision fails ("Revision '<name>' is not ready
        and cannot serve traffic. Quota exceeded for total allowable count of GPUs per project
        per region.", quoted from a real deploy in hashicorp/terraform-provider-google#21999,
        GoogleCloudPlatform/magic-modules#17149); a create without zonal redundancy over its
        quota is refused at once ("You do not have quota for using GPUs without zonal
        redundancy.", the fix in google-marketing-solutions/ariel#26)."""
        rs = self.state.scenario.region(region)
        err = rs.deploy_error
        if err is not None and (not err.gpu_only or template_gpus(template) > 0):
            used = self.deploy_errors_used.get(region, 0)
            if err.times == 0 or used < err.times:
                self.deploy_errors_used[region] = used + 1
                return err
        shortfall = self._quota_shortfall(project, region, template)
        if shortfall:
            self.state.calls["run.quota_exceeded"] += 1
            quota_id, message = shortfall
            where = rs.quota_where
            if where is None:
                where = "api" if creating and message == GPU_ZONAL_MESSAGE else "revision"
            return DeployError(message=message, quota_id=quota_id, where=where, gpu_only=False)
        return None

    def _quota_shortfall(self, project: str, region: str, template: dict) -> tuple[str, str] | None:
        """(quota id, Google's message) of the first quota the template would exceed."""
        instances = max(1, int(template.get("scaling", {}).get("maxInstanceCount", 0) or 1))
        gpus = template_gpus(template) * instances
        if gpus:
            if template.get("gpuZonalRedundancyDisabled"):
                quota_id, message = (
                    "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion",
                    (GPU_ZONAL_MESSAGE),
                )
            else:
                quota_id, message = "NvidiaL4GpuAllocPerProjectRegion", GPU_QUOTA_MESSAGE
            if gpus > self.quota_limit(project, region, quota_id):
                return quota_id, message
        limits = template_limits(template)
        if parse_cpu(limits.get("cpu")) * instances > self.quota_limit(
            project, region, "CpuAllocPerProjectRegion"
        ):
            return "CpuAllocPerProjectRegion", CPU_QUOTA_MESSAGE
        if parse_memory_gib(limits.get("memory")) * instances > self.quota_limit(
            project, region, "MemAllocPerProjectRegion"
        ):
            return "MemAllocPerProjectRegion", MEMORY_QUOTA_MESSAGE
        return None

    def quota_limit(self, project: str, region: str, quota_id: str) -> float:
        """The region's quota (GPUs, vCPU, GiB): the Quotas emulator's view if it offers one
        (`state.stores["quotas"].effective_limit(project, region, quota_id)`, e.g. after a
        granted preference), else the scenario's value."""
        lookup = getattr(self.state.stores.get("quotas"), "effective_limit", None)
        if callable(lookup):
            value = lookup(project, region, quota_id)
            if value is not None:
                return float(value)
        rs = self.state.scenario.region(region)
        return float(
            {
                "NvidiaL4GpuAllocPerProjectRegion": rs.gpu,
                "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion": rs.gpu_no_zonal_redundancy,
                "CpuAllocPerProjectRegion": rs.cpu,
                "MemAllocPerProjectRegion": rs.memory_gib,
            }[quota_id]
        )

    def _create_revision(
        self, svc: Service, template: dict, short: str, failure: DeployError | None
    ) -> Revision:
        scenario = self.state.scenario
        if not short:
            suffix = "".join(self.state.rng.choices(string.ascii_lowercase + string.digits, k=3))
            short = f"{svc.short}-{svc.generation:05d}-{suffix}"
        device = template_device(template)
        images = " ".join(c.get("image", "") for c in template.get("containers", []))
        faults = [
            f
            for f in scenario.revision_faults
            if f.accelerator in ("any", device)
            and f.region in ("*", svc.region)
            and f.image_contains in images
            and f.revision_contains in short
        ]
        env, missing_secret = self._resolve_env(svc.project, template)
        rev = Revision(
            name=f"{svc.name}/revisions/{short}",
            short=short,
            service=svc.name,
            project=svc.project,
            region=svc.region,
            generation=svc.generation,
            template=copy.deepcopy(template),
            uid=str(uuid.uuid4()),
            create_time=now_rfc3339(),
            ready=True,
            device=device,
            faults=faults,
            env=env,
        )
        if failure is not None:  # where == "revision"
            self.state.calls["run.deploy_error.revision"] += 1
            rev.ready, rev.message, rev.reason = False, failure.message, "REVISION_FAILED"
        elif missing_secret:
            rev.ready, rev.message, rev.reason = (
                False,
                missing_secret,
                "SECRETS_ACCESS_CHECK_FAILED",
            )
        elif scenario.region(svc.region).never_ready or (
            not self.state.docker_host and any(f.fault == "never_ready" for f in faults)
        ):
            self._not_started(rev)
        elif self.state.docker_host or any(f.fault in STARTUP_FAULTS for f in faults):
            # With a Docker daemon the container decides (a never_ready fault reaches it as
            # env): it reconciles until it listens on $PORT or its probe gives up
            # (`start_container`).
            rev.ready, rev.reconciling = False, True
        self.revisions[rev.name] = rev
        self.state.calls["run.revision_created"] += 1
        if not rev.ready and not rev.reconciling:
            self._log_failure(rev)
        return rev

    def _not_started(self, rev: Revision) -> None:
        """The revision's container did not listen on $PORT within the startup probe."""
        probe = startup_probe(rev.template)
        rev.ready, rev.message = False, NOT_READY_MESSAGE.format(port=probe.port)
        rev.revision_reason = "HEALTH_CHECK_CONTAINER_ERROR"

    def _log_failure(self, rev: Revision) -> None:
        self.state.calls["run.revision_failed"] += 1
        if rev.revision_reason:  # the container was started and failed its probe
            text = startup_probe(rev.template).failure_text(container_name(rev.template))
            write_revision_log(self.state, rev, "ERROR", text)
        write_revision_log(self.state, rev, "ERROR", rev.message)

    def start_container(self, rev: Revision, decided: Callable[[Revision], None]) -> None:
        """Start a reconciling revision's container in the background (the emulator answers
        meanwhile); on the event loop, once it listens or its probe gave up, the revision is
        Ready or failed and `decided(rev)` runs. Called on the event loop."""

        def wanted() -> bool:
            return self.revisions.get(rev.name) is rev

        async def run() -> None:
            try:
                if self.state.docker_host:
                    started = await start_revision_container(self.state, rev, wanted)
                else:
                    started = await self._start_in_process(rev)
            finally:
                self.starting.pop(rev.name, None)
            rev.reconciling = False
            if started:
                rev.ready = True
            else:
                self._not_started(rev)
                if wanted():
                    self._log_failure(rev)
            decided(rev)

        self.starting[rev.name] = asyncio.get_running_loop().create_task(
            run(), name=f"start-{rev.short}"
        )

    async def _start_in_process(self, rev: Revision) -> bool:
        """Without a Docker daemon, a startup fault (sandbox/scenario.py) as the container
        would show it: a missing module's traceback on stderr then the exit; a slow start
        listens after `start_s`, or not within the startup probe's window."""
        window = startup_probe(rev.template).window_s
        for fault in rev.faults:
            if fault.fault == "missing_dependency":
                for line in missing_dependency_lines(fault.module):
                    write_revision_log(self.state, rev, "DEFAULT", line, stream="stderr")
                write_revision_log(self.state, rev, "WARNING", EXIT_LINE, stream="varlog%2Fsystem")
                return False
            if fault.fault == "slow_start":
                await asyncio.sleep(min(fault.start_s, window))
                return fault.start_s <= window
        return True

    def _resolve_env(self, project: str, template: dict) -> tuple[dict[str, str], str]:
        """The first container's env with secrets resolved from the scenario's `secrets`."""
        env: dict[str, str] = {}
        containers = template.get("containers") or [{}]
        for var in containers[0].get("env", []):
            ref = var.get("valueSource", {}).get("secretKeyRef")
            if ref is None:
                env[var["name"]] = var.get("value", "")
                continue
            secret = ref.get("secret", "")
            value = self.state.secret(secret)
            if value is None:
                version = ref.get("version", "latest")
                return env, (
                    f"spec.template.spec.containers[0].env.valueFrom.secretKeyRef: Secret "
                    f"projects/{project}/secrets/{secret.rsplit('/', 1)[-1]}/versions/{version} "
                    "was not found"
                )
            env[var["name"]] = value
        return env, ""

    def delete_revision(self, name: str) -> Revision:
        rev = self.get_revision(name)
        svc = self.services.get(rev.service)
        if svc is not None:
            serving = [s for s in svc.statuses if s["revision"] == name]
            if any(s["percent"] > 0 or s.get("tag") for s in serving):
                raise ApiError(
                    400,
                    f"Revision '{rev.short}' is receiving traffic (or has a tag) and cannot be "
                    "deleted: move its traffic and tags first.",
                    status="FAILED_PRECONDITION",
                )
            if svc.latest_created == name:
                raise ApiError(
                    400,
                    f"Revision '{rev.short}' is the latest revision of service '{svc.short}' "
                    "and cannot be deleted.",
                    status="FAILED_PRECONDITION",
                )
        del self.revisions[name]
        self.instances.pop(name, None)
        containers = container_store(self.state)
        if containers is not None:
            containers.remove(name)
        if svc is not None:
            svc.latest_ready = next(
                (r.name for r in reversed(self.service_revisions(svc.name)) if r.ready), ""
            )
            self.record(svc, "delete_revision", note=rev.short)
        gpu_instances.refresh(self, rev.project, rev.region)
        return rev


def oom_killed(state: SandboxState, rev: Revision) -> bool:
    """Whether this request to `rev` dies of its `oom` fault; if so, Cloud Run's own lines.

    Google's platform writes "Memory limit of 16384 MiB exceeded with 16420 MiB used. Consider
    increasing the memory limit, see https://cloud.google.com/run/docs/configuring/memory-limits"
    (quoted from dart-lang/pub-dev#9554, SkyTruth/cerulean-cloud#90), then terminates the
    container ("Container terminated on signal 9."); in-flight requests get a 503
    (mindset-ai/memex-ai#3: "OOM-killed ... 503ing all in-flight requests")."""
    fault = next((f for f in rev.faults if f.fault == "oom"), None)
    if fault is None:
        return False
    rev.page_requests += 1
    if fault.requests and rev.page_requests > fault.requests:
        return False
    limit_mib = round(parse_memory_gib(template_limits(rev.template).get("memory")) * 1024)
    write_revision_log(
        state,
        rev,
        "ERROR",
        f"Memory limit of {limit_mib} MiB exceeded with {limit_mib + 36} MiB used. Consider "
        "increasing the memory limit, see https://cloud.google.com/run/docs/configuring/"
        "memory-limits",
    )
    write_revision_log(state, rev, "WARNING", "Container terminated on signal 9.")
    state.calls["run.oom_killed"] += 1
    return True
