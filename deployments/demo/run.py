"""The pipeline, played on a fresh local sandbox: used by `shipyard demo` and bench/release.py.

`run_demo` plays the whole pipeline with the production flows: the sandbox seeds an upstream
NVIDIA-like CUDA image (sandbox/seed.py, the sandbox playing Docker Hub), `mirror_base_image`
copies it into the base repository and records the pin, `prewarm_cache_tiers` builds the cache
tiers, and `release` builds the sample service on the sandbox Cloud Build from this git
checkout's HEAD (the real commit, not the tag), deploys, runs the canary and cuts over.

Everything the demo starts, it stops, by handle/PID: a temporary Prefect server (only when no
Prefect API is configured), the sandbox (registry + Google API emulator). Only the target is
tuned for a local cloud (short polls, no log ingestion wait) and the internal token is a fresh
random value in a Prefect Secret block and in the sandbox's Secret Manager.
"""

from __future__ import annotations

import contextvars
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.deployments.demo.state import DemoState, DemoStateBusy, demo_state, forget, holding

DEMO_TOKEN_BLOCK = "shipyard-demo-internal-token"
DEMO_SERVICE = "manga-translator-compute"
DEMO_IMAGE = "registry.sandbox.local/manga/page-service"  # bench/release.py: no build
DEMO_BUILD_BLOCK = "shipyard-demo-build"


@contextmanager
def prefect_api(startup_timeout: float = 90.0) -> Iterator[str]:
    """The configured Prefect API, or a temporary local server (temporary database) for the
    duration of the block."""
    with prefect_server(startup_timeout) as server:
        yield server.wait()


@dataclass
class PrefectServer:
    """A Prefect API that may still be starting: `wait()` before the first call to it."""

    url: str
    _starting: threading.Thread | None = None
    _failed: list[BaseException] = field(default_factory=list)
    reused_db: bool = False  # a kept template database: no tables to create, no blocks to register
    started_s: float = 0.0  # launch to healthy
    waited_s: float = 0.0  # of which the caller spent in wait()

    def wait(self) -> str:
        if self._starting is not None:
            waiting = time.perf_counter()
            self._starting.join()
            self._starting = None
            self.waited_s = round(time.perf_counter() - waiting, 2)
        if self._failed:
            raise self._failed[0]
        return self.url


@contextmanager
def prefect_server(
    startup_timeout: float = 90.0, home: Path | None = None
) -> Iterator[PrefectServer]:
    """The configured Prefect API, or a temporary local server started in the background (its
    process imports, creates its tables and registers the block types while the caller goes on;
    `wait()` joins it). `home`: PREFECT_HOME kept between runs, with a template database made
    at the first start and copied to a fresh database at every later one (the runs' contents
    never carry over; the server's first-start work does). Without `home`, a temporary one."""
    import prefect.settings as ps

    configured = ps.get_current_settings().api.url
    if configured:
        yield PrefectServer(str(configured))
        return
    from prefect.server.api.server import SubprocessASGIServer

    from sandbox.procs import free_port

    with ExitStack() as stack:
        if home is None:
            home = Path(tempfile.mkdtemp(prefix="shipyard-demo-prefect-"))
            stack.callback(shutil.rmtree, home, True)
        home.mkdir(parents=True, exist_ok=True)
        db_path, template = home / "prefect.db", home / TEMPLATE_DB
        reused = _fresh_database(db_path, template)
        stack.enter_context(
            ps.temporary_settings(
                updates={
                    ps.PREFECT_SERVER_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{db_path}",
                    ps.PREFECT_HOME: str(home),
                    ps.PREFECT_SERVER_ANALYTICS_ENABLED: False,  # no telemetry from a demo
                }
            )
        )
        server = SubprocessASGIServer(port=free_port())
        handle = PrefectServer(server.api_url, reused_db=reused)

        def start() -> None:
            launched = time.perf_counter()
            try:
                server.start(timeout=int(startup_timeout))
                handle.started_s = round(time.perf_counter() - launched, 2)
                if not reused:
                    _snapshot_database(db_path, template)
            except BaseException as exc:  # handed to wait()
                handle._failed.append(exc)

        # The thread sees this context's settings (database, home) for the server's env.
        handle._starting = threading.Thread(
            target=contextvars.copy_context().run, args=(start,), daemon=True
        )
        handle._starting.start()
        stack.callback(server.stop)
        stack.callback(handle.wait)  # never stop a server still starting
        stack.enter_context(ps.temporary_settings(updates={ps.PREFECT_API_URL: server.api_url}))
        stack.callback(_drain_workers)  # runs first: logs and events reach the server
        yield handle


TEMPLATE_DB = "template.db"


def _fresh_database(db_path: Path, template: Path) -> bool:
    """Start from an empty database, or from a copy of the template. True: the template."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    if template.is_file():
        shutil.copyfile(template, db_path)
        return True
    return False


def _snapshot_database(db_path: Path, template: Path) -> None:
    """Copy the just-started server's database to the template (sqlite's online backup: a
    consistent copy while the server holds it open)."""
    import sqlite3

    partial = template.with_suffix(".partial")
    source, dest = sqlite3.connect(db_path), sqlite3.connect(partial)
    try:
        source.backup(dest)
    finally:
        dest.close()
        source.close()
    partial.replace(template)


def _drain_workers() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    EventsWorker.drain_all(timeout=10)


@dataclass
class LocalCloud:
    info: Any  # sandbox.manager.SandboxInfo
    admin: Any  # sandbox.admin.SandboxAdmin
    token_block: str
    token: str


@contextmanager
def local_cloud(
    startup_timeout: float = 60.0,
    engine: bool = False,
    state: DemoState | None = None,
    prefect: PrefectServer | None = None,
) -> Iterator[LocalCloud]:
    """A fresh sandbox with the env pointing Shipyard at it, and the internal token stored.
    `engine`: builds and revisions on the sandbox's own Docker daemon where it can start.
    `state`: the registry's storage and the daemon's data root are kept there (and the registry
    asks for its last port again); else a temporary root, removed afterwards. `prefect`: a
    server still starting, waited for once the sandbox is up."""
    from prefect.blocks.system import Secret
    from pydantic import SecretStr

    from sandbox.admin import SandboxAdmin
    from sandbox.manager import start_sandbox

    if state is None:
        root = Path(tempfile.mkdtemp(prefix="shipyard-demo-sandbox-"))
        port = None
    else:
        root, port = state.sandbox_root, state.registry_port()
    info = start_sandbox(root=root, timeout=startup_timeout, engine=engine, registry_port=port)
    if state is not None:
        state.remember_registry_port(int(info.registry_host.rsplit(":", 1)[1]))
    admin = SandboxAdmin(info.emulator_url)
    try:
        with info.env_applied():
            if prefect is not None:
                prefect.wait()
            token = "tok-" + secrets.token_hex(16)
            Secret(value=SecretStr(token)).save(DEMO_TOKEN_BLOCK, overwrite=True)
            yield LocalCloud(info=info, admin=admin, token_block=DEMO_TOKEN_BLOCK, token=token)
    finally:
        admin.close()
        info.stop()
        if state is None:
            shutil.rmtree(root, ignore_errors=True)


def stage(cloud: LocalCloud, scenario: str, **overrides: Any) -> dict:
    """Reset the sandbox to a scenario (name or file), with the token in its Secret Manager."""
    from sandbox.scenario import load_scenario

    data = load_scenario(scenario).model_dump()
    data["secrets"] = {**data.get("secrets", {}), cloud.token_block: cloud.token}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    cloud.admin.reset(scenario_data=data)
    return data


def sandbox_target(
    service: str = DEMO_SERVICE,
    regions: list[str] | None = None,
    token_block: str = DEMO_TOKEN_BLOCK,
    **overrides,
):
    """The seed-003 target with waits tuned for a local cloud (polls in ms, no log lag); the
    internal token is the Prefect Secret block `token_block` and the Secret Manager entry of the
    same name."""
    from shipyard.blocks.release_target import (
        CanaryPolicy,
        GpuTemplate,
        QuotaPolicy,
        ReleaseTarget,
        SecretEnv,
        default_cpu_template,
    )

    secret_env = {"INTERNAL_TOKEN": SecretEnv(secret=token_block)}
    cpu = default_cpu_template().model_copy(update={"secret_env": secret_env})
    fields: dict[str, Any] = dict(
        service=service,
        regions=regions or ["europe-west1", "us-central1"],
        gpu_template=GpuTemplate(secret_env=secret_env),
        cpu_template=cpu,
        quota=QuotaPolicy(
            contact_email="platform@example.com", budget_s=30, poll_initial_s=0.1, poll_max_s=1
        ),
        canary=CanaryPolicy(token_secret=token_block, log_settle_s=0, retry_delay_s=0.1),
        retries=3,
        retry_delay_s=0.1,
        poll_interval_s=0.05,
        ready_timeout_s=60,
    )
    fields.update(overrides)
    return ReleaseTarget(**fields)


def check_invariants(cloud: LocalCloud, service: str, results: list) -> list[str]:
    """Invariants 1-3 over the service's whole traffic history in the sandbox."""
    from sandbox.release_invariants import all_violations

    return all_violations(cloud.admin.traffic_history(service), results)


Progress = Callable[[str], None]


def repo_checkout() -> tuple[Path, str]:
    """(root, HEAD commit) of the git checkout this code runs from: what the demo's Cloud Build
    fetches (committed work only; CI runs in a fresh clone, where HEAD is the commit)."""
    here = Path(__file__).resolve().parent
    try:
        root = _git(here, "rev-parse", "--show-toplevel")
        commit = _git(here, "rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError) as exc:
        raise DemoError(
            f"the demo builds from its own git checkout, but {here} is not in one with a commit "
            f"({exc}): run it from a clone of the Shipyard repository"
        ) from None
    return Path(root), commit


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


class DemoError(RuntimeError):
    """The demo cannot run here (the message says why and what to do)."""


@contextmanager
def _stage_timer(
    name: str, key: str, progress: Progress, stages: dict[str, float]
) -> Iterator[dict]:
    """Time a stage into stages[key] (seconds) and say it with its detail."""
    info: dict[str, str] = {"detail": ""}
    progress(f"▶ {name} …")
    started = time.perf_counter()
    yield info
    stages[key] = round(time.perf_counter() - started, 2)
    progress(f"✓ {name} ({stages[key]:.1f} s){': ' + info['detail'] if info['detail'] else ''}")


def _load() -> float:
    """The 1-minute load average: beside every figure (the demo's seconds depend on it)."""
    return round(os.getloadavg()[0], 2)


def save_build_blocks(cloud: LocalCloud, git_url: str) -> tuple[str, str]:
    """BuildSettings for the sandbox registry and this checkout; the default CacheTiers.
    Returns (settings block, base repository)."""
    from shipyard.blocks.build_settings import BuildSettings

    host = cloud.info.registry_host
    settings = BuildSettings(
        image_repository=f"{host}/shipyard/page-service",
        base_repository=f"{host}/base-images/cuda",
        git_url=git_url,
        poll_s=0.05,
        timeout_s=600,
    )
    settings.save(DEMO_BUILD_BLOCK, overwrite=True)
    return DEMO_BUILD_BLOCK, settings.resolved_base_repository()


def _destination_digest(registry_url: str, repository: str, tag: str) -> str:
    """The digest the destination registry itself serves for repository:tag (sandbox client)."""
    import asyncio

    from sandbox.oci import SandboxRegistry

    async def go() -> str:
        reg = SandboxRegistry(registry_url)
        try:
            return (await reg.get_manifest(repository.split("/", 1)[1], tag))[1]
        finally:
            await reg.aclose()

    return asyncio.run(go())


def run_demo(
    scenario: str = "default",
    git_tag: str = "v1.0.0",
    progress: Progress | None = None,
    engine: bool = False,
    keep: bool = True,
    fresh: bool = False,
) -> dict[str, Any]:
    """The full pipeline on a fresh Prefect API (if none) and sandbox: seed the upstream CUDA
    image ("Docker Hub"), mirror it into the base repository (pin by digest), prewarm the cache
    tiers, release `git_tag` built by the sandbox Cloud Build from this checkout's HEAD.
    `engine`: on the sandbox's Docker daemon (real builds and containers, the upstream image
    over the Debian root filesystem) where it can start; else in-process.
    `keep`: the registry's storage, the daemon's data root and a template Prefect database are
    kept in $SHIPYARD_HOME/demo (deployments/demo/state.py), so a second run mirrors nothing
    new, skips the prewarmed tiers and finds its build cached; `fresh` throws them away first."""
    import asyncio

    from sandbox.engine.daemon import unavailable_reason
    from sandbox.seed import UPSTREAM_REPOSITORY, UPSTREAM_TAG, seed_cuda_image

    say = progress or (lambda line: None)
    stages: dict[str, float] = {}
    started = time.perf_counter()
    load_start = _load()
    root, commit = repo_checkout()
    with ExitStack() as stack:
        state = demo_state() if keep or fresh else None
        if state is not None:
            try:
                stack.enter_context(holding(state))
            except DemoStateBusy as exc:
                raise DemoError(str(exc)) from None
        forgotten = forget(state) if fresh and state is not None else False
        state = state if keep else None
        found = state.found() if state is not None else {}
        remembered_port = state.registry_port() if state is not None else None
        prefect = stack.enter_context(
            prefect_server(home=state.prefect_home if state is not None else None)
        )
        say(
            "▶ prefect api … starting beside the next stages"
            + (" (from the kept template database)" if prefect.reused_db else "")
        )
        # Imported once the Prefect server is launched: these imports run beside its start.
        from shipyard.flows.build.prewarm import prewarm_cache_tiers
        from shipyard.flows.mirror.flow import mirror_base_image
        from shipyard.flows.release.flow import run_release

        rootfs = None
        if engine and unavailable_reason() is None:
            from sandbox.engine.rootfs import ensure_rootfs

            with _stage_timer("base root filesystem", "rootfs_s", say, stages) as info:
                rootfs = ensure_rootfs()  # cached by `make rootfs`
                how = f"built in {rootfs.built_s:.0f} s" if rootfs.built_s else "cached"
                info["detail"] = f"{rootfs.path.name} ({rootfs.size / 1e6:.0f} MB, {how})"
        with _stage_timer("sandbox", "sandbox_up_s", say, stages) as info:
            cloud = stack.enter_context(local_cloud(engine=engine, state=state, prefect=prefect))
            say(f"✓ prefect api ({prefect.started_s:.1f} s, in the background): {prefect.url}")
            stage(cloud, scenario)
            settings_block, base_repository = save_build_blocks(cloud, f"file://{root}")
            info["detail"] = f"registry {cloud.info.registry_host}, scenario {scenario}"
        stages["prefect_start_s"] = prefect.started_s
        stages["prefect_wait_s"] = prefect.waited_s  # of sandbox_up_s: the rest ran beside
        with _stage_timer("seed upstream", "seed_s", say, stages) as info:
            if cloud.info.mode != "containers":
                rootfs = None  # the synthetic layer: nothing runs it
            upstream = seed_cuda_image(
                cloud.info.registry_url, UPSTREAM_REPOSITORY, UPSTREAM_TAG, rootfs=rootfs
            )
            info["detail"] = f"{upstream.ref} {upstream.digest[:19]}"
        with _stage_timer("mirror", "mirror_s", say, stages) as info:
            mirrored = asyncio.run(mirror_base_image(upstream.ref, base_repository))
            served = _destination_digest(cloud.info.registry_url, base_repository, UPSTREAM_TAG)
            info["detail"] = (
                f"{mirrored['status']} to {base_repository}@{mirrored['digest'][:19]}, "
                f"cuDNN {mirrored.get('cudnn')}"
            )
        with _stage_timer("prewarm", "prewarm_s", say, stages) as info:
            warmed = prewarm_cache_tiers(revision=commit, settings_block=settings_block)
            info["detail"] = ", ".join(f"{t.tier} {t.action}" for t in warmed.tiers)
        with _stage_timer("release", "release_s", say, stages) as info:
            target = sandbox_target(base_image=base_repository, build_settings_block=settings_block)
            result = run_release(git_tag, target, commit=commit)
            info["detail"] = f"{result.outcome} in {result.region or '-'}"
        with _stage_timer("invariants", "invariants_s", say, stages) as info:
            violations = check_invariants(cloud, target.service, [result])
            history = cloud.admin.traffic_history(target.service)
            info["detail"] = "all hold" if not violations else f"{len(violations)} violated"
        say("▶ teardown …")
        teardown = time.perf_counter()
    stages["teardown_s"] = round(time.perf_counter() - teardown, 2)
    say(f"✓ teardown ({stages['teardown_s']:.1f} s)")
    out = result.model_dump(mode="json")
    out["scenario"] = scenario
    out["commit"] = commit
    out["mirror"] = {
        "source": upstream.ref,
        "upstream_digest": upstream.digest,
        "destination": base_repository,
        "digest": mirrored["digest"],
        "destination_digest": served,
        "status": mirrored["status"],
        "cudnn": mirrored.get("cudnn"),
        "cuda": mirrored.get("cuda"),
        "bytes_copied": mirrored.get("bytes_copied"),
    }
    out["prewarm"] = {
        "quarter": warmed.quarter,
        "base_image": warmed.base_image,
        "built": [t.tier for t in warmed.tiers if t.action == "built"],
        "skipped": [t.tier for t in warmed.tiers if t.action == "skipped"],
        "tiers": [
            {"tier": t.tier, "action": t.action, "image": t.image, "seconds": t.seconds}
            for t in warmed.tiers
        ],
    }
    if result.build is not None:
        stages["build_s"] = round(result.build.seconds, 2)  # of release_s
    out["stages"] = stages
    out["load_avg_1m"] = {"start": load_start, "end": _load()}
    out["kept_state"] = {
        "dir": str(state.root) if state is not None else None,
        "fresh": fresh,
        "forgotten": forgotten,
        "found": found,
        "reused": _reused(found, prefect, cloud, remembered_port, rootfs, mirrored, out),
    }
    # Which sandbox ran: "containers" (builds and revisions on its Docker daemon) or in-process.
    out["sandbox_mode"] = cloud.info.mode
    out["sandbox_mode_note"] = cloud.info.mode_note
    out["wall_s"] = round(time.perf_counter() - started, 2)
    out["invariants_ok"] = not violations
    out["invariant_violations"] = violations
    out["traffic_history"] = [
        {
            "seq": h["seq"],
            "service": h["name"],
            "event": h["event"],
            "traffic": [
                {k: t[k] for k in ("revision", "percent", "tag", "ready")} for t in h["traffic"]
            ],
        }
        for h in history
    ]
    return out


def _reused(
    found: dict[str, bool],
    prefect: PrefectServer,
    cloud: LocalCloud,
    remembered_port: int | None,
    rootfs: Any,
    mirrored: dict[str, Any],
    out: dict[str, Any],
) -> list[str]:
    """What this run reused, one phrase each (the demo says it; empty: it was cold)."""
    reused = []
    if rootfs is not None and not rootfs.built_s:
        reused.append("base root filesystem (cached layer)")
    if prefect.reused_db:
        reused.append("Prefect template database (tables and block types ready)")
    if found.get("registry"):
        port = int(cloud.info.registry_host.rsplit(":", 1)[1])
        moved = "" if port == remembered_port else f" (port {remembered_port} taken: moved)"
        reused.append(f"registry storage{moved}")
    if found.get("engine") and cloud.info.mode == "containers":
        reused.append("engine data root (images, build cache)")
    if found.get("registry") and mirrored.get("bytes_copied") == 0:
        reused.append("mirrored base (same digest, 0 bytes copied)")
    if out["prewarm"]["skipped"]:
        reused.append("tiers skipped by fingerprint: " + ", ".join(out["prewarm"]["skipped"]))
    build = out.get("build") or {}
    if build.get("cached_steps") and not build.get("run_steps"):
        reused.append("release build fully cached")
    return reused
