"""The pipeline, played on a fresh local sandbox: used by `shipyard demo` and bench/release.py.

`run_demo` plays the whole pipeline with the production flows: the sandbox seeds an upstream
NVIDIA-like CUDA image (sandbox/seed.py, the sandbox playing Docker Hub), `mirror_base_image`
copies it into the base repository and records the pin, `prewarm_cache_tiers` builds the cache
tiers, and `release` builds the sample service on the sandbox Cloud Build from this git
checkout's HEAD (the real commit, not the tag), deploys, runs the canary and cuts over.

Everything the demo starts, it stops, by handle/PID: a temporary `prefect server start` (only
when no Prefect API is configured: deployments/demo/prefect_server.py), the sandbox (registry +
Google API emulator). Only the target is tuned for a local cloud (short polls, no log ingestion
wait) and the internal token is a fresh random value in a Prefect Secret block and in the
sandbox's Secret Manager.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.deployments.demo.prefect_server import PrefectServer, prefect_api, prefect_server
from shipyard.deployments.demo.state import DemoState, DemoStateBusy, demo_state, forget, holding

if TYPE_CHECKING:
    from sandbox.admin import SandboxAdmin
    from sandbox.engine.rootfs import RootfsLayer
    from sandbox.manager import SandboxInfo
    from shipyard.blocks.release_target import ReleaseTarget
    from shipyard.flows.release.result import ReleaseResult

__all__ = [
    "DEMO_TOKEN_BLOCK",
    "DemoError",
    "LocalCloud",
    "PrefectServer",
    "local_cloud",
    "prefect_api",
    "prefect_server",
    "run_demo",
    "sandbox_target",
    "stage",
]

DEMO_TOKEN_BLOCK = "shipyard-demo-internal-token"  # noqa: S105 - a block name, not a secret
DEMO_SERVICE = "manga-translator-compute"
DEMO_IMAGE = "registry.sandbox.local/manga/page-service"  # bench/release.py: no build
DEMO_BUILD_BLOCK = "shipyard-demo-build"


@dataclass
class LocalCloud:
    info: SandboxInfo
    admin: SandboxAdmin
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


def stage(cloud: LocalCloud, scenario: str, **overrides: Any) -> dict[str, Any]:
    """Reset the sandbox to a scenario (name or file), with the token in its Secret Manager.
    Returns the scenario as the emulator got it (its JSON document)."""
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
    **overrides: Any,
) -> ReleaseTarget:
    """The seed-003 target with waits tuned for a local cloud (polls in ms, no log lag); the
    internal token is the Prefect Secret block `token_block` and the Secret Manager entry of the
    same name."""
    from shipyard.blocks.canary_policy import CanaryPolicy
    from shipyard.blocks.quota_policy import QuotaPolicy
    from shipyard.blocks.release_target import ReleaseTarget
    from shipyard.blocks.revision_templates import GpuTemplate, SecretEnv, default_cpu_template

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
        # No ready_timeout_s here: the block's own (Cloud Run's startup probe may take minutes;
        # a revision Ready after a shorter local cap was rolled back, issue 21).
    )
    fields.update(overrides)
    return ReleaseTarget(**fields)


def check_invariants(
    cloud: LocalCloud, service: str, results: Sequence[ReleaseResult]
) -> list[str]:
    """Invariants 1-3 over the service's whole traffic history in the sandbox."""
    from sandbox.release_invariants import all_violations

    return all_violations(cloud.admin.traffic_history(service), list(results))


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
) -> Iterator[dict[str, str]]:
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
    `keep`: the registry's storage and the daemon's data root are kept in $SHIPYARD_HOME/demo
    (deployments/demo/state.py), so a second run mirrors nothing new, skips the prewarmed tiers
    and finds its build cached; `fresh` throws them away first. The Prefect server (when none
    is configured) is a new `prefect server start` with an empty database at every run
    (deployments/demo/prefect_server.py)."""
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
        if state is not None:
            state.drop_legacy()
        prefect = stack.enter_context(prefect_server())
        say("▶ prefect api … starting beside the next stages")
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
            # The release builds a tag only at the commit it points at: build from a shared
            # bare clone of this checkout with git_tag at HEAD (the checkout stays untouched).
            source = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "source.git"
            _git(root, "clone", "-q", "--bare", "--shared", str(root), str(source))
            _git(source, "tag", "-f", git_tag, commit)
            settings_block, base_repository = save_build_blocks(cloud, f"file://{source}")
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
        "reused": _reused(found, cloud, remembered_port, rootfs, mirrored, out),
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
    cloud: LocalCloud,
    remembered_port: int | None,
    rootfs: RootfsLayer | None,
    mirrored: dict[str, Any],
    out: dict[str, Any],
) -> list[str]:
    """What this run reused, one phrase each (the demo says it; empty: it was cold)."""
    reused = []
    if rootfs is not None and not rootfs.built_s:
        reused.append("base root filesystem (cached layer)")
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
