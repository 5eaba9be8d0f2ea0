"""`shipyard setup`: everything a release from the Prefect UI needs on the local sandbox.

What a new user did by hand before (README, deployments/demo/run.py), in one idempotent
command against the running sandbox (`shipyard sandbox up`) and the configured Prefect API:

1. register Shipyard's block types (what `prefect block register -m blocks.…` does);
2. the `sandbox` GoogleCloud block (the emulator's endpoint), the `shipyard-internal-token`
   Prefect Secret and the sandbox Secret Manager entry of the same name and value;
3. the `sandbox` BuildSettings block (sandbox registry repositories, the git URL builds fetch,
   its token's Secret block), and the `sandbox` CacheTiers block: the tiers the repository's
   files call for (deployments/cli/repo_scan.py: no `node` tier without a package.json);
4. the upstream `nvidia/cuda` image seeded into the sandbox registry ("Docker Hub"), mirrored
   into `base-images/cuda` with its pin recorded (the mirror flow);
5. the `default` ReleaseTarget, its service named after the repository (the build context's
   folder, or `--service`), referencing the blocks above, polls tuned for a local cloud,
   the `shipyard-process` work pool and the `shipyard_base_mirror` variable.

Each step says `created`, `already there` or `updated`; a second run changes nothing. Blocks a
user edited keep their edits: only the fields setup owns (the endpoint, the repositories, the
git URL and its secret's name, the tiers, the target's service, cloud, build blocks and, from
`init --sample`, its canary) are put back.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from shipyard.deployments.cli.errors import SANDBOX_FIX, UsageError, one_line

if TYPE_CHECKING:
    from prefect.blocks.core import Block

    from sandbox.admin import SandboxAdmin
    from sandbox.manager import SandboxInfo
    from sandbox.oci import SandboxRegistry
    from shipyard.blocks.cache_tiers import CacheTier

Action = Literal["created", "already there", "updated"]

TARGET_BLOCK = "default"
CLOUD_BLOCK = "sandbox"
BUILD_BLOCK = "sandbox"
TIERS_BLOCK = "sandbox"
GIT_TOKEN_ENV = "SHIPYARD_GIT_TOKEN"  # noqa: S105 - the variable's name, not a token
TOKEN_BLOCK = "shipyard-internal-token"  # noqa: S105 - a block *name*, not a secret
WORK_POOL = "shipyard-process"
BASE_MIRROR_VARIABLE = "shipyard_base_mirror"
BASE_REPOSITORY = "base-images/cuda"
GIT_URL_CREDENTIALS = (
    "--git-url carries credentials (user:token@): setup would store and print them in plain "
    "text. Give the URL without them and the token through a Secret block: "
    "SHIPYARD_GIT_TOKEN=... shipyard setup --git-url https://HOST/ORG/REPO.git "
    "--git-token-secret NAME (setup saves the token in the Secret block NAME, never printing it)"
)
PREFECT_FIX = (
    "start `prefect server start` and `export PREFECT_API_URL=http://127.0.0.1:4200/api` "
    "(the server's address)"
)


@dataclass
class Done:
    """One line of setup's report."""

    what: str
    action: Action
    detail: str = ""

    def line(self) -> str:
        return f"{self.action:<13} {self.what}" + (f" ({self.detail})" if self.detail else "")


Say = Callable[[Done], None]


# ---------------------------------------------------------------- preconditions


def prefect_api_url() -> str:
    """The configured Prefect API, answering; else UsageError with the fix."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise UsageError(f"no Prefect API is configured (PREFECT_API_URL is empty): {PREFECT_FIX}")
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise UsageError(
            f"the Prefect API at {url} does not answer ({one_line(problem)}): {PREFECT_FIX}"
        )
    return str(url)


def running_sandbox() -> SandboxInfo:
    """The sandbox `shipyard sandbox up` started (its state file), answering; else UsageError."""
    from sandbox.admin import SandboxAdmin
    from sandbox.manager import read_info, state_file

    info = read_info()
    if info is None or not all(info.alive().values()):
        raise UsageError(f"no sandbox is running (no live {state_file()}): {SANDBOX_FIX}")
    admin = SandboxAdmin(info.emulator_url)
    try:
        admin.health()
    except Exception as exc:  # noqa: BLE001 - any failure means the same fix
        raise UsageError(
            f"the sandbox emulator at {info.emulator_url} does not answer ({one_line(exc)}): "
            f"`shipyard sandbox down`, then {SANDBOX_FIX}"
        ) from None
    finally:
        admin.close()
    return info


def default_git_url() -> str:
    """SHIPYARD_GIT_URL, else the git checkout this code runs from (what the demo builds)."""
    import os

    from shipyard.deployments.demo.run import DemoError, repo_checkout

    if os.environ.get("SHIPYARD_GIT_URL"):
        return os.environ["SHIPYARD_GIT_URL"]
    try:
        root, _ = repo_checkout()
    except DemoError:
        raise UsageError(
            "--git-url is not given and Shipyard does not run from a git checkout: pass "
            "--git-url URL (the repository Cloud Build fetches) or set SHIPYARD_GIT_URL"
        ) from None
    return f"file://{root}"


# ---------------------------------------------------------------- the steps


def block_types() -> list[type[Block]]:
    from shipyard.blocks.build_settings import BuildSettings
    from shipyard.blocks.cache_tiers import CacheTiers
    from shipyard.blocks.canary_policy import CanaryPolicy
    from shipyard.blocks.cloud import GoogleCloud
    from shipyard.blocks.release_target import ReleaseTarget

    return [GoogleCloud, CanaryPolicy, ReleaseTarget, BuildSettings, CacheTiers]


def register_block_type(cls: type[Block]) -> Done:
    """`prefect block register` for one class, saying whether the server had it already."""
    from prefect.blocks.core import _should_update_block_type
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    what = f"block type {cls.get_block_type_name()!r}"
    with get_client(sync_client=True) as client:
        try:
            server_type = client.read_block_type_by_slug(cls.get_block_type_slug())
        except ObjectNotFound:
            action: Action = "created"
        else:
            action = "already there"
            if _should_update_block_type(cls._to_block_type(), server_type):
                action = "updated"
            else:
                try:
                    client.read_block_schema_by_checksum(
                        cls._calculate_schema_checksum(), version=cls.get_block_schema_version()
                    )
                except ObjectNotFound:
                    action = "updated"
    cls.register_type_and_schema()
    return Done(what, action, "new schema" if action == "updated" else "")


def _plain(value: object) -> object:
    from pydantic import BaseModel

    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def ensure_block(cls: type[Block], name: str, desired: Block, owned: list[str], what: str) -> Done:
    """Create block `name` as `desired`; when it exists, put back only the `owned` fields that
    differ (a user's other edits stay)."""
    from prefect.exceptions import ObjectNotFound

    label = f"{cls.get_block_type_name()} block {name!r}{': ' + what if what else ''}"
    try:
        existing = cast("Block", cls.load(name))  # Block.load is sync here: no running loop
    except (ValueError, ObjectNotFound):
        desired.save(name, overwrite=False)
        return Done(label, "created")
    changed = [f for f in owned if _plain(getattr(existing, f)) != _plain(getattr(desired, f))]
    if not changed:
        return Done(label, "already there")
    updated = existing.model_copy(update={f: getattr(desired, f) for f in changed})
    updated.save(name, overwrite=True)
    return Done(label, "updated", ", ".join(changed))


def ensure_token(admin: SandboxAdmin) -> list[Done]:
    """The internal token: a Prefect Secret block (kept when it exists) and the sandbox Secret
    Manager entry of the same name holding the same value (compared by digest)."""
    import hashlib

    from prefect.blocks.system import Secret
    from pydantic import SecretStr

    done = []
    try:
        token = str(cast(Secret[str], Secret.load(TOKEN_BLOCK)).get())
        done.append(Done(f"Secret block {TOKEN_BLOCK!r}", "already there"))
    except ValueError:
        token = "tok-" + secrets.token_hex(16)
        Secret(value=SecretStr(token)).save(TOKEN_BLOCK)
        done.append(Done(f"Secret block {TOKEN_BLOCK!r}", "created", "a fresh random token"))
    have = admin.secret_digest(TOKEN_BLOCK)
    what = f"sandbox Secret Manager entry {TOKEN_BLOCK!r}"
    if have == hashlib.sha256(token.encode()).hexdigest():
        done.append(Done(what, "already there"))
    else:
        admin.put_secret(TOKEN_BLOCK, token)
        done.append(Done(what, "created" if have is None else "updated", "the Secret's value"))
    return done


def seed_upstream(info: SandboxInfo) -> tuple[Done, str]:
    """The upstream CUDA image in the sandbox registry; returns (line, its reference)."""
    import asyncio

    from sandbox.oci import SandboxRegistry
    from sandbox.seed import UPSTREAM_REPOSITORY, UPSTREAM_TAG, seed_cuda_image

    ref = f"{info.registry_host}/{UPSTREAM_REPOSITORY}:{UPSTREAM_TAG}"
    what = f"upstream image {ref}"
    if asyncio.run(
        _manifest_digest(SandboxRegistry(info.registry_url), UPSTREAM_REPOSITORY, UPSTREAM_TAG)
    ):
        return Done(what, "already there"), ref
    rootfs = None
    if info.mode == "containers":  # builds run on it: a real filesystem (make rootfs caches it)
        from sandbox.engine.rootfs import ensure_rootfs

        rootfs = ensure_rootfs()
    seeded = seed_cuda_image(info.registry_url, UPSTREAM_REPOSITORY, UPSTREAM_TAG, rootfs=rootfs)
    return Done(what, "created", seeded.digest[:19]), ref


async def _manifest_digest(registry: SandboxRegistry, repo: str, reference: str) -> str | None:
    try:
        return str((await registry.get_manifest(repo, reference))[1])
    except Exception:  # noqa: BLE001 - not there (404) or unreadable: seed it
        return None
    finally:
        await registry.aclose()


def mirror_base(info: SandboxInfo, upstream: str, destination: str) -> Done:
    """The mirror flow, unless the pin exists and the registry still serves its digest."""
    import asyncio

    from sandbox.oci import SandboxRegistry
    from shipyard.flows.mirror.flow import mirror_base_image, read_base_pin

    what = f"base image {destination} pinned by digest"
    pin = read_base_pin(destination)
    if pin and pin.get("digest"):
        repo = destination.split("/", 1)[1]
        if asyncio.run(_manifest_digest(SandboxRegistry(info.registry_url), repo, pin["digest"])):
            return Done(what, "already there", pin["digest"][:19])
    result = asyncio.run(mirror_base_image(upstream, destination))
    return Done(what, "updated" if pin else "created", str(result.get("digest", ""))[:19])


def ensure_work_pool() -> Done:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    what = f"work pool {WORK_POOL!r} (process)"
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(WORK_POOL)
            return Done(what, "already there")
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=WORK_POOL, type="process"))
            return Done(what, "created")


def ensure_variable(name: str, value: str) -> Done:
    from prefect.variables import Variable

    current = Variable.get(name, default=None)
    if current == value:
        return Done(f"variable {name}", "already there", value)
    Variable.set(name, value, overwrite=True)
    return Done(f"variable {name}", "created" if current is None else "updated", value)


# ---------------------------------------------------------------- the whole


@dataclass
class ServicePlan:
    """The service setup (or init) makes the blocks for: named after its repository, with the
    cache tiers its files call for and, from `init --sample`, its canary request."""

    service: str
    source_dir: str
    tiers: list[CacheTier]
    image_path: str = ""  # repository path in the registry; default shipyard/<service>
    canary: dict[str, Any] = field(default_factory=dict)  # CanaryPolicy fields to set
    found: list[str] = field(default_factory=list)  # the files that decided the tiers

    @property
    def image_repository(self) -> str:
        return self.image_path or f"shipyard/{self.service}"


def plan_from_git(git_url: str, source_dir: str, service: str | None = None) -> ServicePlan:
    """Read the repository's HEAD (the build context `source_dir`) and propose its plan."""
    import shutil

    from shipyard.deployments.cli.repo_scan import (
        RELEASE_STAGE,
        check_dockerfile,
        propose_tiers,
        scan,
        service_name,
    )
    from shipyard.tasks.git_source import GitError, checkout

    try:
        root, _ = checkout(git_url, "HEAD")
    except GitError as exc:
        raise UsageError(
            f"--git-url: cannot read the repository ({one_line(exc)}): give a URL git can fetch"
        ) from None
    try:
        context = root / source_dir
        if not context.is_dir():
            raise UsageError(
                f"--source-dir {source_dir!r} is not a folder of the repository's HEAD: give the "
                "build context's path inside it ('.' for its root)"
            )
        found = scan(context)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    where = f"{source_dir!r} of the repository's HEAD"
    if found.dockerfile is None:
        raise UsageError(
            f"no Dockerfile in {where}: run `shipyard init` in that folder (it writes one and "
            "makes these blocks), then commit it"
        )
    check = check_dockerfile(found.dockerfile, propose_tiers(found), RELEASE_STAGE)
    if check.problems or not check.tiers:
        raise UsageError(
            f"the Dockerfile in {where} cannot be released by Shipyard: "
            + "; ".join(check.problems or ["no `base` stage: name it `FROM ${BASE_IMAGE} AS base`"])
        )
    return ServicePlan(
        service=service or service_name(git_url, source_dir),
        source_dir=source_dir,
        tiers=check.tiers,
        found=found.found(),
    )


def ensure_git_token(secret_name: str) -> Done:
    """The git token's Secret block: created or updated from SHIPYARD_GIT_TOKEN when that is
    set (its value never printed), else it must exist already."""
    import os

    from prefect.blocks.system import Secret
    from pydantic import SecretStr

    what = f"Secret block {secret_name!r} (git token)"
    token = os.environ.get(GIT_TOKEN_ENV, "").strip()
    try:
        current: str | None = str(cast(Secret[str], Secret.load(secret_name)).get())
    except ValueError:
        current = None
    if not token:
        if current is None:
            raise UsageError(
                f"--git-token-secret {secret_name!r}: no Secret block of that name; set "
                f"{GIT_TOKEN_ENV} to the token for this run (setup stores it there), or create it "
                "with `prefect block create secret`"
            )
        return Done(what, "already there")
    if current is not None and secrets.compare_digest(current, token):
        return Done(what, "already there")
    Secret(value=SecretStr(token)).save(secret_name, overwrite=True)
    return Done(what, "created" if current is None else "updated", f"from {GIT_TOKEN_ENV}")


def run_setup(
    git_url: str | None = None,
    say: Say | None = None,
    source_dir: str | None = None,
    plan: ServicePlan | None = None,
    git_token_secret: str | None = None,
    service: str | None = None,
) -> list[Done]:
    """Set the sandbox up for releases from the Prefect UI; returns what each step did.
    `plan`: the service's (from `shipyard init`); else read from the repository's HEAD."""
    from sandbox.admin import SandboxAdmin
    from shipyard.blocks.build_settings import BuildSettings, url_has_credentials
    from shipyard.blocks.cache_tiers import CacheTiers
    from shipyard.blocks.canary_policy import CanaryPolicy
    from shipyard.blocks.cloud import GoogleCloud
    from shipyard.blocks.release_target import ReleaseTarget
    from shipyard.deployments.demo.run import sandbox_target

    if git_url and url_has_credentials(git_url):  # before anything is made or printed
        raise UsageError(GIT_URL_CREDENTIALS)
    prefect_api_url()
    info = running_sandbox()
    git_url = git_url or default_git_url()
    if url_has_credentials(git_url):
        raise UsageError(GIT_URL_CREDENTIALS.replace("--git-url", "SHIPYARD_GIT_URL"))
    done: list[Done] = []

    def record(item: Done) -> None:
        done.append(item)
        if say is not None:
            say(item)

    for cls in block_types():
        record(register_block_type(cls))
    if git_token_secret:
        record(ensure_git_token(git_token_secret))
    settings = BuildSettings(
        base_repository=f"{info.registry_host}/{BASE_REPOSITORY}",
        git_url=git_url,
        git_credentials_secret=git_token_secret,
        poll_s=0.05,
        timeout_s=600,
    )
    if plan is None:
        plan = plan_from_git(
            settings.resolved_git_url(), source_dir or settings.source_dir, service
        )
    settings.source_dir = plan.source_dir
    settings.image_repository = f"{info.registry_host}/{plan.image_repository}"
    record(
        ensure_block(
            GoogleCloud,
            CLOUD_BLOCK,
            GoogleCloud(endpoint=info.emulator_url),
            ["endpoint"],
            f"endpoint {info.emulator_url}",
        )
    )
    admin = SandboxAdmin(info.emulator_url)
    try:
        for item in ensure_token(admin):
            record(item)
    finally:
        admin.close()
    base = settings.resolved_base_repository()
    owned = [
        "image_repository",
        "base_repository",
        "git_url",
        "git_credentials_secret",
        "source_dir",
    ]
    what = f"builds {git_url} ({plan.source_dir}) into {settings.image_repository}"
    record(ensure_block(BuildSettings, BUILD_BLOCK, settings, owned, what))
    tiers = CacheTiers(tiers=plan.tiers)
    what = "tiers " + ", ".join(t.name for t in plan.tiers)
    what += f" (from {', '.join(plan.found)})" if plan.found else ""
    record(ensure_block(CacheTiers, TIERS_BLOCK, tiers, ["tiers"], what))
    seeded, upstream = seed_upstream(info)
    record(seeded)
    record(mirror_base(info, upstream, base))
    target = sandbox_target(
        service=plan.service,
        token_block=TOKEN_BLOCK,
        cloud=GoogleCloud.load(CLOUD_BLOCK),
        build_settings_block=BUILD_BLOCK,
        build_tiers_block=TIERS_BLOCK,
    )
    owned = ["service", "cloud", "build_settings_block", "build_tiers_block"]
    if plan.canary:
        target.canary = CanaryPolicy(**{**target.canary.model_dump(), **plan.canary})
        owned.append("canary")
    what = (
        f"service {plan.service}, cloud {CLOUD_BLOCK!r}, build settings {BUILD_BLOCK!r}, "
        f"cache tiers {TIERS_BLOCK!r}"
    )
    record(ensure_block(ReleaseTarget, TARGET_BLOCK, target, owned, what))
    record(ensure_work_pool())
    record(ensure_variable(BASE_MIRROR_VARIABLE, base))
    return done


def summary(done: list[Done]) -> str:
    changed = [d for d in done if d.action != "already there"]
    if not changed:
        return "nothing changed: everything was already there"
    created = sum(d.action == "created" for d in done)
    updated = sum(d.action == "updated" for d in done)
    return f"{created} created, {updated} updated, {len(done) - len(changed)} already there"
