"""The sandbox's `docker buildx build`: a BuildKit stand-in that builds real images into the registry.

What it does with a build request (the arguments of a `gcr.io/cloud-builders/docker` buildx step):

- Parses the Dockerfile (tasks/dockerfile.py) and the buildx flags; an unknown flag, stage,
  instruction or a missing file fails the build with BuildKit's own wording.
- Builds only the stages the `--target` needs (FROM and COPY --from dependencies), in order.
- Derives a cache key per instruction: sha256 of the parent key, the instruction text (after
  ARG/ENV substitution where Docker substitutes) and, for COPY/ADD, the content of the files it
  copies (mode + sha256 per destination path). FROM an image keys on its manifest digest; FROM a
  stage continues that stage's chain. LABEL/EXPOSE/CMD/ENTRYPOINT do not enter the chain (as in
  BuildKit, they never invalidate later steps).
- An instruction is CACHED when one of the `--cache-from` images holds its key. Cache images
  carry their key map: an inline cache (`--cache-to type=inline`) in the image config under
  `shipyard.buildcache.v0`, a registry cache (`--cache-to type=registry,ref=…,mode=max|min`) as a
  manifest whose config (media type application/vnd.buildkit.cacheconfig.v0) is that map, with
  the layers it covers. mode=max covers every stage built, mode=min the final image's chain.
- Layers are real: COPY/ADD produce a tar.gz of the copied files (from the git checkout, after
  .dockerignore, or from another stage's files), RUN a small deterministic tar recording the
  command (commands are not executed), WORKDIR and metadata produce none. Base layers are
  referenced from the FROM image by cross-repository mount; cached layers are reused by digest.
- Writes BuildKit's plain progress (`#5 [python-deps 2/3] RUN …`, `#5 CACHED`, `#5 DONE 0.1s`,
  `#5 ERROR: …`, `ERROR: failed to solve: …`) through `emit`.

CPU work (walking the context, hashing, tar+gzip) runs in threads: the emulator's event loop
keeps answering while a build runs, and cancelling the coroutine cancels the build.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import os
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.oci import (
    CACHE_CONFIG,
    DOCKER_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Layer,
    RegistryFailure,
    SandboxRegistry,
    make_layer,
    split_ref,
)
from tasks.dockerfile import (
    FS_STEPS,
    Dockerfile,
    DockerfileError,
    Instruction,
    Stage,
    parse_dockerfile,
    split_kv,
    substitute,
)

INLINE_KEY = "shipyard.buildcache.v0"
RUN_RECORD_DIR = "/.shipyard-sandbox/run"
# Keys that carry state into later steps (enter the chain); the rest is image metadata only.
CHAIN_METADATA = frozenset({"ARG", "ENV", "USER", "SHELL"})

Emit = Callable[[str], None]


class BuildFailed(Exception):
    """The build stopped; `step` names the BuildKit vertex (e.g. `[python-deps 2/3] RUN …`)."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}" if step else message)
        self.step = step
        self.message = message


# ---------------------------------------------------------------- buildx arguments


@dataclass
class BuildxArgs:
    context: str = "."
    dockerfile: str | None = None
    target: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    cache_from: list[str] = field(default_factory=list)
    cache_to: list[dict[str, str]] = field(default_factory=list)
    push: bool = False
    no_cache: bool = False


def _kv_list(value: str) -> dict[str, str]:
    out = {}
    for part in value.split(","):
        key, sep, val = part.partition("=")
        if not sep:
            raise BuildFailed("", f"invalid value {value!r}: expected key=value[,key=value]")
        out[key.strip()] = val.strip()
    return out


def parse_buildx_build(args: list[str]) -> BuildxArgs:
    """The arguments after `buildx build`; refuses what the sandbox does not implement."""
    out = BuildxArgs()
    positional: list[str] = []
    i = 0
    with_value = {
        "-f": "file",
        "--file": "file",
        "-t": "tag",
        "--tag": "tag",
        "--target": "target",
        "--build-arg": "build-arg",
        "--label": "label",
        "--cache-from": "cache-from",
        "--cache-to": "cache-to",
        "--platform": "platform",
        "--progress": "progress",
        "--provenance": "provenance",
        "--sbom": "sbom",
        "--metadata-file": "metadata-file",
        "--builder": "builder",
        "--output": "output",
        "-o": "output",
    }
    switches = {"--push", "--pull", "--no-cache", "--load", "-q", "--quiet"}
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in switches and not eq:
            if name == "--push":
                out.push = True
            elif name == "--no-cache":
                out.no_cache = True
            elif name == "--load":
                raise BuildFailed(
                    "",
                    "--load is not available with the docker-container driver on Cloud Build: "
                    "use --push",
                )
            i += 1
            continue
        if name in ("--provenance", "--sbom") and not eq and i + 1 >= len(args):
            i += 1
            continue
        if name in with_value:
            if eq:
                value = inline
            else:
                if i + 1 >= len(args):
                    raise BuildFailed("", f"flag needs an argument: {name}")
                value = args[i + 1]
                i += 1
            kind = with_value[name]
            if kind == "file":
                out.dockerfile = value
            elif kind == "tag":
                out.tags.append(value)
            elif kind == "target":
                out.target = value
            elif kind == "build-arg":
                key, sep, val = value.partition("=")
                if not sep:
                    raise BuildFailed(
                        "",
                        f"--build-arg {value!r}: give KEY=VALUE (no host environment on the builder)",
                    )
                out.build_args[key] = val
            elif kind == "label":
                key, _, val = value.partition("=")
                out.labels[key] = val
            elif kind == "cache-from":
                spec = _kv_list(value) if "=" in value else {"type": "registry", "ref": value}
                if spec.get("type", "registry") != "registry" or not spec.get("ref"):
                    raise BuildFailed(
                        "", f"--cache-from {value!r}: the sandbox imports type=registry,ref=… only"
                    )
                out.cache_from.append(spec["ref"])
            elif kind == "cache-to":
                spec = _kv_list(value)
                kind_to = spec.get("type")
                if kind_to == "inline":
                    out.cache_to.append({"type": "inline"})
                elif kind_to == "registry" and spec.get("ref"):
                    mode = spec.get("mode", "min")
                    if mode not in ("min", "max"):
                        raise BuildFailed("", f"--cache-to {value!r}: mode must be min or max")
                    out.cache_to.append({"type": "registry", "ref": spec["ref"], "mode": mode})
                else:
                    raise BuildFailed(
                        "",
                        f"--cache-to {value!r}: the sandbox exports type=inline or "
                        "type=registry,ref=…[,mode=max] only",
                    )
            elif kind == "platform" and value not in ("linux/amd64", "linux/x86_64"):
                raise BuildFailed("", f"--platform {value}: the sandbox builds linux/amd64 only")
            elif kind == "output":
                spec = _kv_list(value)
                if spec.get("type") not in ("registry", "image"):
                    raise BuildFailed("", f"--output {value!r}: use type=registry (or --push)")
                out.push = out.push or spec.get("type") == "registry" or spec.get("push") == "true"
            i += 1
            continue
        if arg.startswith("-"):
            raise BuildFailed("", f"unknown flag: {name}")
        positional.append(arg)
        i += 1
    if len(positional) != 1:
        raise BuildFailed(
            "", f'"docker buildx build" requires exactly 1 argument (the context), got {positional}'
        )
    out.context = positional[0]
    return out


# ---------------------------------------------------------------- the build context


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    pattern = pattern.strip().lstrip("/")
    while pattern.startswith("./"):
        pattern = pattern[2:]
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out.rstrip("/") + "$")


def read_dockerignore(context: Path) -> list[tuple[bool, re.Pattern[str]]]:
    path = context / ".dockerignore"
    rules = []
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            rules.append((negate, _ignore_regex(line.lstrip("!"))))
    return rules


def _ignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


def scan_context(context: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the context not excluded by .dockerignore: {rel path: (content, mode)}."""
    rules = read_dockerignore(context)
    files: dict[str, tuple[bytes, int]] = {}
    for root, dirs, names in os.walk(context):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(names):
            full = Path(root) / name
            rel = full.relative_to(context).as_posix()
            if _ignored(rel, rules) or not full.is_file():
                continue
            mode = 0o755 if os.access(full, os.X_OK) else 0o644
            files[rel] = (full.read_bytes(), mode)
    return files


def select_files(
    tree: dict[str, tuple[bytes, int]], sources: list[str], dest: str, workdir: str, where: str
) -> dict[str, tuple[bytes, int]]:
    """COPY semantics over a file tree (paths without a leading slash): {dest path: (data, mode)}."""
    if not dest.startswith("/"):
        dest = (workdir.rstrip("/") + "/" + dest) if dest not in (".", "./") else workdir + "/"
    dest_is_dir = dest.endswith("/") or len(sources) > 1
    out: dict[str, tuple[bytes, int]] = {}
    for src in sources:
        norm = src.strip().lstrip("/")
        while norm.startswith("./"):
            norm = norm[2:]
        norm = norm.rstrip("/")
        if norm in ("", "."):
            matched = {rel: rel for rel in tree}
        elif any(ch in norm for ch in "*?["):
            matched = {
                rel: rel.rsplit("/", 1)[-1] for rel in tree if fnmatch.fnmatchcase(rel, norm)
            }
            dest_is_dir = True
        elif norm in tree:
            matched = {norm: norm.rsplit("/", 1)[-1] if dest_is_dir else ""}
        else:
            prefix = norm + "/"
            matched = {rel: rel[len(prefix) :] for rel in tree if rel.startswith(prefix)}
            dest_is_dir = True
        if not matched:
            raise BuildFailed(
                where,
                f'failed to compute cache key: failed to calculate checksum of ref: "/{norm}": '
                "not found",
            )
        for rel, tail in matched.items():
            target = (dest.rstrip("/") + "/" + tail) if tail else dest
            out["/" + target.strip("/")] = tree[rel]
    return out


def files_digest(files: dict[str, tuple[bytes, int]]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        data, mode = files[path]
        h.update(f"{path}\0{mode:o}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return h.hexdigest()


def chain_key(*parts: str) -> str:
    return "sha256:" + hashlib.sha256("\0".join(parts).encode()).hexdigest()


# ---------------------------------------------------------------- progress log


class Progress:
    """BuildKit's `--progress plain` output, one line per emit."""

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self.n = 0
        self.t0 = time.monotonic()

    def vertex(self, name: str) -> Vertex:
        self.n += 1
        self.emit(f"#{self.n} {name}")
        return Vertex(self, self.n, name)


@dataclass
class Vertex:
    progress: Progress
    n: int
    name: str
    started: float = field(default_factory=time.monotonic)

    def line(self, text: str) -> None:
        self.progress.emit(f"#{self.n} {text}")

    def log(self, text: str) -> None:
        self.line(f"{time.monotonic() - self.started:.3f} {text}")

    def done(self) -> None:
        self.line(f"DONE {time.monotonic() - self.started:.1f}s")

    def cached(self) -> None:
        self.line("CACHED")

    def error(self, message: str) -> None:
        self.line(f"ERROR: {message}")


# ---------------------------------------------------------------- the build


@dataclass
class LayerRef:
    digest: str
    diff_id: str
    size: int
    repo: str | None = None  # where the blob already is (None: `data` holds it)
    data: bytes | None = None


@dataclass
class StageState:
    stage: Stage
    key: str
    config: dict[str, Any]
    layers: list[LayerRef]
    files: dict[str, tuple[bytes, int]]
    env: dict[str, str]
    history: list[dict[str, Any]]
    entries: list[tuple[str, LayerRef | None]] = field(default_factory=list)
    parent: StageState | None = None

    def chain(self) -> list[StageState]:
        out: list[StageState] = []
        node: StageState | None = self
        while node is not None:
            out.append(node)
            node = node.parent
        return list(reversed(out))


@dataclass
class CacheEntry:
    layer: LayerRef | None


@dataclass
class BuildOutput:
    digest: str | None
    images: list[dict[str, str]]
    steps: list[tuple[str, str]]  # (step name, CACHED|DONE)
    cache_exports: list[dict[str, str]]
    config: dict[str, Any]


@dataclass
class BuildPolicy:
    """Scenario knobs (sandbox/build_scenario.py): a forced failure and a per-step delay."""

    fail_step: str | None = None
    message: str = "forced failure"
    exit_code: int = 1
    step_delay_s: float = 0.0


class Builder:
    def __init__(
        self,
        registry: SandboxRegistry,
        cwd: Path,
        args: BuildxArgs,
        emit: Emit,
        policy: BuildPolicy | None = None,
    ) -> None:
        self.registry = registry
        self.cwd = cwd
        self.args = args
        self.progress = Progress(emit)
        self.emit = emit
        self.policy = policy or BuildPolicy()
        self.cache: dict[str, CacheEntry] = {}
        self.steps: list[tuple[str, str]] = []
        self._pending_from: tuple[Vertex, str] | None = None

    # -- helpers -------------------------------------------------------------------------

    def fail(self, vertex: Vertex | None, message: str) -> BuildFailed:
        step = vertex.name if vertex else ""
        self._settle_from(False)
        if vertex is not None:
            vertex.error(message)
            self.emit("------")
            self.emit(f" > {step}:")
            self.emit("------")
        self.emit(f"ERROR: failed to solve: {message}")
        return BuildFailed(step, message)

    def _image_ref(self, ref: str, what: str) -> tuple[str, str]:
        try:
            host, repo, reference = split_ref(ref)
        except RegistryFailure as exc:
            raise BuildFailed("", f"{what}: {exc}") from None
        if not self.registry.same_host(host):
            raise BuildFailed(
                "",
                f"{what} {ref}: the sandbox's Cloud Build reaches only the sandbox registry "
                f"({self.registry.host}); mirror the image there first",
            )
        return repo, reference

    # -- phases --------------------------------------------------------------------------

    async def run(self) -> BuildOutput:
        self.emit('#0 building with "shipyard" instance using docker-container driver')
        context = (self.cwd / self.args.context).resolve()
        dockerfile_path = (
            (self.cwd / self.args.dockerfile) if self.args.dockerfile else context / "Dockerfile"
        )
        v = self.progress.vertex(f"[internal] load build definition from {dockerfile_path.name}")
        if not context.is_dir():
            raise self.fail(v, f"unable to prepare context: path {self.args.context!r} not found")
        if not dockerfile_path.is_file():
            raise self.fail(
                v,
                f"failed to read dockerfile: open {dockerfile_path.name}: no such file or directory",
            )
        text = dockerfile_path.read_text()
        v.line(f"transferring dockerfile: {len(text.encode())}B done")
        try:
            dockerfile = await asyncio.to_thread(parse_dockerfile, text)
        except DockerfileError as exc:
            raise self.fail(v, str(exc)) from None
        v.done()

        global_args = {
            name: self.args.build_args.get(name, default or "")
            for name, default in dockerfile.global_args
        }
        unused = set(self.args.build_args) - set(global_args) - self._stage_args(dockerfile)
        target = self._target(dockerfile)
        stages = self._needed(dockerfile, target, global_args)

        bases: dict[int, tuple[str, str, dict, dict]] = {}
        for stage in stages:
            base = substitute(stage.base, global_args)
            earlier = dockerfile.stage(base)
            if earlier is not None and earlier.index < stage.index:
                continue
            if not base:
                raise self.fail(
                    None, f"base name ({stage.base}) should not be blank (line {stage.line})"
                )
            v = self.progress.vertex(f"[internal] load metadata for {base}")
            try:
                repo, reference = self._image_ref(base, "FROM")
                manifest, digest, config = await self._resolve_image(repo, reference)
            except (BuildFailed, RegistryFailure) as exc:
                msg = exc.message if isinstance(exc, BuildFailed) else str(exc)
                raise self.fail(v, f"failed to resolve source metadata for {base}: {msg}") from None
            v.done()
            bases[stage.index] = (f"{self.registry.host}/{repo}@{digest}", repo, manifest, config)

        v = self.progress.vertex("[internal] load .dockerignore")
        v.line("transferring context: done")
        v.done()
        await self._import_caches()
        v = self.progress.vertex("[internal] load build context")
        tree = await asyncio.to_thread(scan_context, context)
        v.line(f"transferring context: {sum(len(d) for d, _ in tree.values())}B done")
        v.done()

        states: dict[int, StageState] = {}
        for stage in stages:
            states[stage.index] = await self._build_stage(
                dockerfile, stage, states, bases, tree, global_args
            )
        final = states[target.index]
        if unused:
            self.emit(
                f"WARNING: build-arg(s) {', '.join(sorted(unused))} were not consumed by the Dockerfile"
            )
        return await self._export(final, list(states.values()))

    def _stage_args(self, dockerfile: Dockerfile) -> set[str]:
        names: set[str] = set()
        for stage in dockerfile.stages:
            for ins in stage.instructions:
                if ins.cmd == "ARG":
                    names.update(w.partition("=")[0] for w in ins.args.split())
        return names

    def _target(self, dockerfile: Dockerfile) -> Stage:
        if self.args.target is None:
            return dockerfile.stages[-1]
        stage = dockerfile.stage(self.args.target)
        if stage is None or not stage.name:
            raise self.fail(None, f'target stage "{self.args.target}" could not be found')
        return stage

    def _needed(self, dockerfile: Dockerfile, target: Stage, args: dict[str, str]) -> list[Stage]:
        needed: set[int] = set()

        def visit(stage: Stage) -> None:
            if stage.index in needed:
                return
            needed.add(stage.index)
            base = dockerfile.stage(substitute(stage.base, args))
            if base is not None and base.index < stage.index:
                visit(base)
            for ins in stage.instructions:
                if ins.cmd == "COPY" and "from" in ins.flags:
                    ref = dockerfile.stage(ins.flags["from"])
                    if ref is None:
                        raise self.fail(
                            None,
                            f"COPY --from={ins.flags['from']} (line {ins.line}): the sandbox copies "
                            "from build stages only, and no stage has that name",
                        )
                    if ref.index >= stage.index:
                        raise self.fail(
                            None, f"COPY --from={ins.flags['from']}: circular dependency"
                        )
                    visit(ref)

        visit(target)
        return [s for s in dockerfile.stages if s.index in needed]

    async def _resolve_image(self, repo: str, reference: str) -> tuple[dict, str, dict]:
        manifest, digest, _ = await self.registry.get_manifest(repo, reference)
        if manifest.get("mediaType") in (OCI_INDEX, DOCKER_LIST) or "manifests" in manifest:
            children = [
                m
                for m in manifest.get("manifests", [])
                if (m.get("platform") or {}).get("architecture") == "amd64"
            ]
            if not children:
                raise RegistryFailure(f"{repo}@{digest}: no linux/amd64 image in the index")
            manifest, digest, _ = await self.registry.get_manifest(repo, children[0]["digest"])
        config = json.loads(await self.registry.get_blob(repo, manifest["config"]["digest"]))
        return manifest, digest, config

    async def _import_caches(self) -> None:
        for ref in self.args.cache_from:
            v = self.progress.vertex(f"importing cache manifest from {ref}")
            try:
                repo, reference = self._image_ref(ref, "--cache-from")
                manifest, _, _ = await self.registry.get_manifest(repo, reference)
                config_desc = manifest["config"]
                config = json.loads(await self.registry.get_blob(repo, config_desc["digest"]))
            except (BuildFailed, RegistryFailure) as exc:
                msg = exc.message if isinstance(exc, BuildFailed) else str(exc)
                v.error(f"failed to configure registry cache importer: {msg}")
                continue
            layers = manifest.get("layers", [])
            if config_desc.get("mediaType") == CACHE_CONFIG:
                keys, diff_ids = config.get("keys", {}), config.get("diff_ids", [])
            else:
                keys = (config.get(INLINE_KEY) or {}).get("keys", {})
                diff_ids = (config.get("rootfs") or {}).get("diff_ids", [])
            for key, index in keys.items():
                layer = None
                if index is not None:
                    desc = layers[index]
                    layer = LayerRef(desc["digest"], diff_ids[index], desc["size"], repo)
                self.cache.setdefault(key, CacheEntry(layer))
            v.line(f"{len(keys)} cache keys")
            v.done()

    async def _build_stage(
        self,
        dockerfile: Dockerfile,
        stage: Stage,
        states: dict[int, StageState],
        bases: dict[int, tuple[str, str, dict, dict]],
        tree: dict[str, tuple[bytes, int]],
        global_args: dict[str, str],
    ) -> StageState:
        fs_total = 1 + sum(1 for ins in stage.instructions if ins.cmd in FS_STEPS)
        step_no = 1
        if stage.index in bases:
            ref, repo, manifest, config = bases[stage.index]
            key = chain_key("FROM", ref)
            inner = dict(config.get("config") or {})
            env = dict(e.split("=", 1) for e in inner.get("Env") or [] if "=" in e)
            diff_ids = (config.get("rootfs") or {}).get("diff_ids", [])
            layers = [
                LayerRef(d["digest"], diff_ids[i], d["size"], repo)
                for i, d in enumerate(manifest.get("layers", []))
            ]
            state = StageState(stage, key, inner, layers, {}, env, list(config.get("history", [])))
            name = f"[{stage.display} 1/{fs_total}] FROM {ref}"
            v = self.progress.vertex(name)
            v.line(f"resolve {ref} done")
            # BuildKit shows FROM as CACHED when the step after it is cached (no bytes needed).
            self._pending_from = (v, name)
            if not any(ins.cmd in FS_STEPS for ins in stage.instructions):
                self._settle_from(False)
        else:
            parent_stage = dockerfile.stage(substitute(stage.base, global_args))
            assert parent_stage is not None  # a FROM <stage> was resolved when ordering stages
            parent = states[parent_stage.index]
            state = StageState(
                stage,
                parent.key,
                json.loads(json.dumps(parent.config)),
                list(parent.layers),
                dict(parent.files),
                dict(parent.env),
                list(parent.history),
                parent=parent,
            )
        args: dict[str, str] = {}
        for ins in stage.instructions:
            scope = {**global_args, **state.env, **args}
            if ins.cmd == "ARG":
                for word in ins.args.split():
                    name_, sep, default = word.partition("=")
                    args[name_] = self.args.build_args.get(
                        name_, global_args.get(name_, default if sep else "")
                    )
                    state.key = chain_key(state.key, f"ARG {name_}={args[name_]}")
                continue
            if ins.cmd not in FS_STEPS:
                self._metadata(state, ins, scope)
                continue
            step_no += 1
            name = f"[{stage.display} {step_no}/{fs_total}] {ins.text}"
            await self._fs_step(state, ins, name, scope, tree, states, dockerfile)
        return state

    def _metadata(self, state: StageState, ins: Instruction, scope: dict[str, str]) -> None:
        cfg = state.config
        try:
            if ins.cmd == "ENV":
                for key, value in split_kv(ins.args, "ENV", ins.line):
                    state.env[key] = substitute(value, {**scope, **state.env})
                cfg["Env"] = [f"{k}={v}" for k, v in state.env.items()]
            elif ins.cmd == "LABEL":
                labels = dict(cfg.get("Labels") or {})
                for key, value in split_kv(ins.args, "LABEL", ins.line):
                    labels[substitute(key, scope)] = substitute(value, scope)
                cfg["Labels"] = labels
            elif ins.cmd == "EXPOSE":
                ports = dict(cfg.get("ExposedPorts") or {})
                for port in substitute(ins.args, scope).split():
                    ports[port if "/" in port else f"{port}/tcp"] = {}
                cfg["ExposedPorts"] = ports
            elif ins.cmd == "USER":
                cfg["User"] = substitute(ins.args, scope)
            elif ins.cmd in ("CMD", "ENTRYPOINT"):
                words = ins.json_args()
                if words is None:
                    words = [*(cfg.get("Shell") or ["/bin/sh", "-c"]), ins.args]
                cfg["Cmd" if ins.cmd == "CMD" else "Entrypoint"] = words
            elif ins.cmd == "SHELL":
                words = ins.json_args()
                if words is None:
                    raise DockerfileError(
                        f"dockerfile parse error on line {ins.line}: SHELL requires the JSON form"
                    )
                cfg["Shell"] = words
            elif ins.cmd == "VOLUME":
                vols = dict(cfg.get("Volumes") or {})
                for vol in ins.json_args() or ins.args.split():
                    vols[vol] = {}
                cfg["Volumes"] = vols
            elif ins.cmd == "STOPSIGNAL":
                cfg["StopSignal"] = ins.args
        except DockerfileError as exc:
            raise self.fail(None, str(exc)) from None
        if ins.cmd in CHAIN_METADATA:
            state.key = chain_key(state.key, ins.text)
        state.history.append({"created_by": ins.text, "empty_layer": True})

    def _settle_from(self, cached: bool) -> None:
        if self._pending_from is None:
            return
        v, name = self._pending_from
        self._pending_from = None
        if cached:
            v.cached()
        else:
            v.done()
        self.steps.append((name, "CACHED" if cached else "DONE"))

    async def _fs_step(
        self,
        state: StageState,
        ins: Instruction,
        name: str,
        scope: dict[str, str],
        tree: dict[str, tuple[bytes, int]],
        states: dict[int, StageState],
        dockerfile: Dockerfile,
    ) -> None:
        v = self.progress.vertex(name)
        workdir = state.config.get("WorkingDir") or "/"
        files: dict[str, tuple[bytes, int]] | None = None
        if ins.cmd == "WORKDIR":
            path = substitute(ins.args, scope)
            workdir = path if path.startswith("/") else workdir.rstrip("/") + "/" + path
            key = chain_key(state.key, ins.text)
            state.config["WorkingDir"] = workdir
        elif ins.cmd in ("COPY", "ADD"):
            words = ins.json_args() or shlex.split(substitute(ins.args, scope))
            if len(words) < 2:
                raise self.fail(v, f"{ins.cmd} requires at least two arguments (source and dest)")
            sources, dest = words[:-1], substitute(words[-1], scope)
            if ins.cmd == "ADD" and any(re.match(r"^[a-z]+://", s) for s in sources):
                raise self.fail(
                    v, "ADD from a URL is not supported by the sandbox's Cloud Build executor"
                )
            if "from" in ins.flags:
                src_stage = dockerfile.stage(ins.flags["from"])
                assert src_stage is not None  # COPY --from=<stage> was resolved when ordering
                src_state = states[src_stage.index]
                src_tree = {p.lstrip("/"): d for p, d in src_state.files.items()}
                origin = src_state.key
            else:
                src_tree, origin = tree, "context"
            try:
                files = await asyncio.to_thread(
                    select_files, src_tree, sources, dest, workdir, name
                )
            except BuildFailed as exc:
                raise self.fail(v, exc.message) from None
            if "chmod" in ins.flags:
                mode = int(ins.flags["chmod"], 8)
                files = {p: (d, mode) for p, (d, _) in files.items()}
            digest = await asyncio.to_thread(files_digest, files)
            key = chain_key(state.key, ins.text, origin, digest)
        else:  # RUN
            key = chain_key(state.key, ins.text)
            record = f"{RUN_RECORD_DIR}/{key.split(':')[1][:16]}.sh"
            files = {record: (f"#!/bin/sh\n{ins.args}\n".encode(), 0o755)}

        hit = None if self.args.no_cache else self.cache.get(key)
        self._settle_from(hit is not None)
        layer: LayerRef | None = None
        if hit is not None:
            v.cached()
            layer = hit.layer
            self.steps.append((name, "CACHED"))
        else:
            if self.policy.step_delay_s:
                await asyncio.sleep(self.policy.step_delay_s)
            if self.policy.fail_step and self.policy.fail_step in name:
                v.log(self.policy.message)
                if ins.cmd == "RUN":
                    problem = (
                        f'process "/bin/sh -c {ins.args}" did not complete successfully: '
                        f"exit code: {self.policy.exit_code}"
                    )
                else:
                    problem = f"failed to copy files: {self.policy.message}"
                raise self.fail(v, problem)
            if ins.cmd == "RUN":
                v.log(f"sandbox: recorded `{ins.args[:120]}` as a layer (not executed)")
            if files:
                built: Layer = await asyncio.to_thread(make_layer, files)
                layer = LayerRef(built.digest, built.diff_id, built.size, None, built.data)
            v.done()
            self.steps.append((name, "DONE"))
        if files:
            state.files.update(files)
        state.key = key
        if layer is not None:
            state.layers.append(layer)
        state.entries.append((key, layer))
        state.history.append({"created_by": ins.text, "empty_layer": layer is None})

    # -- export ----------------------------------------------------------------------------

    def _image_config(self, final: StageState, inline: bool) -> dict[str, Any]:
        cfg = dict(final.config)
        if self.args.labels:
            cfg["Labels"] = {**(cfg.get("Labels") or {}), **self.args.labels}
        config: dict[str, Any] = {
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [lay.diff_id for lay in final.layers]},
            "history": final.history,
        }
        if inline:
            index = {lay.digest: i for i, lay in enumerate(final.layers)}
            keys = {}
            for st in final.chain():
                for key, lay in st.entries:
                    keys[key] = index[lay.digest] if lay is not None else None
            config[INLINE_KEY] = {"keys": keys}
        return config

    async def _push_layers(self, repo: str, layers: list[LayerRef]) -> None:
        for lay in layers:
            if lay.data is not None:
                if not await self.registry.blob_exists(repo, lay.digest):
                    await self.registry.put_blob(repo, lay.data)
                lay.repo = lay.repo or repo
            else:
                await self.registry.ensure_blob(repo, lay.digest, lay.repo or repo)

    @staticmethod
    def _manifest(config_digest: str, config_size: int, layers: list[LayerRef], config_type: str):
        return {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config_type, "digest": config_digest, "size": config_size},
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": lay.digest,
                    "size": lay.size,
                }
                for lay in layers
            ],
        }

    async def _export(self, final: StageState, states: list[StageState]) -> BuildOutput:
        inline = any(c["type"] == "inline" for c in self.args.cache_to)
        config = self._image_config(final, inline)
        raw_config = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        images: list[dict[str, str]] = []
        digest = None
        if self.args.push and self.args.tags:
            v = self.progress.vertex("exporting to image")
            v.line("exporting layers done")
            for tag in self.args.tags:
                repo, reference = self._image_ref(tag, "--tag")
                try:
                    await self._push_layers(repo, final.layers)
                    config_digest = await self.registry.put_blob(repo, raw_config)
                    manifest = self._manifest(
                        config_digest, len(raw_config), final.layers, OCI_CONFIG
                    )
                    digest = await self.registry.put_manifest(repo, reference, manifest)
                except RegistryFailure as exc:
                    raise self.fail(v, f"failed to push {tag}: {exc}") from None
                v.line(f"pushing manifest for {tag}@{digest} done")
                images.append({"name": tag, "digest": digest})
            v.done()
        elif self.args.tags or self.args.push:
            self.emit(
                "WARNING: No output specified with docker-container driver. Build result will only "
                "remain in the build cache. To push result image into registry use --push"
            )
        exports = []
        for spec in self.args.cache_to:
            if spec["type"] != "registry":
                continue
            v = self.progress.vertex("exporting cache to registry")
            chosen = states if spec["mode"] == "max" else final.chain()
            layers: list[LayerRef] = []
            keys: dict[str, int | None] = {}
            seen: dict[str, int] = {}
            for st in chosen:
                for key, lay in st.entries:
                    if lay is not None and lay.digest not in seen:
                        seen[lay.digest] = len(layers)
                        layers.append(lay)
                    keys[key] = seen[lay.digest] if lay is not None else None
            cache_config = {"keys": keys, "diff_ids": [lay.diff_id for lay in layers]}
            raw = json.dumps(cache_config, sort_keys=True, separators=(",", ":")).encode()
            repo, reference = self._image_ref(spec["ref"], "--cache-to")
            try:
                await self._push_layers(repo, layers)
                cfg_digest = await self.registry.put_blob(repo, raw)
                cache_digest = await self.registry.put_manifest(
                    repo, reference, self._manifest(cfg_digest, len(raw), layers, CACHE_CONFIG)
                )
            except RegistryFailure as exc:
                raise self.fail(v, f"failed to export cache to {spec['ref']}: {exc}") from None
            v.line(f"writing cache manifest {cache_digest} done")
            v.done()
            exports.append({"ref": spec["ref"], "digest": cache_digest})
        return BuildOutput(digest, images, self.steps, exports, config)
