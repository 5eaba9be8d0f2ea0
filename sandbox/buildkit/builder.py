"""The build itself: resolve bases, import caches, run each stage's steps, export."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from sandbox.buildkit.build_context import files_digest, scan_context, select_files
from sandbox.buildkit.build_state import (
    BuildFailed,
    BuildOutput,
    BuildPolicy,
    CacheEntry,
    LayerRef,
    StageState,
)
from sandbox.buildkit.buildx_args import BuildxArgs
from sandbox.buildkit.cache_keys import chain_key, imported_key_map, registry_cache_map
from sandbox.buildkit.dockerfile import (
    FS_STEPS,
    Dockerfile,
    DockerfileError,
    Instruction,
    Stage,
    arg_declarations,
    expand,
    expand_words,
    parse_dockerfile,
)
from sandbox.buildkit.image_export import image_config, oci_manifest, push_layers
from sandbox.buildkit.image_metadata import apply_metadata
from sandbox.buildkit.progress import Emit, Progress, Vertex
from sandbox.buildkit.stage_plan import needed_stages, stage_args, target_stage
from sandbox.oci import (
    CACHE_CONFIG,
    DOCKER_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    Layer,
    RegistryFailure,
    SandboxRegistry,
    make_layer,
    split_ref,
)

RUN_RECORD_DIR = "/.shipyard-sandbox/run"


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

        global_args: dict[str, str] = {}
        for name, default in dockerfile.global_args:
            global_args[name] = self.args.build_args.get(
                name, "" if default is None else expand(default, global_args)
            )
        unused = set(self.args.build_args) - set(global_args) - stage_args(dockerfile)
        try:
            target = target_stage(dockerfile, self.args.target)
            stages = needed_stages(dockerfile, target, global_args)
        except BuildFailed as exc:
            raise self.fail(None, exc.message) from None

        bases: dict[int, tuple[str, str, dict, dict]] = {}
        for stage in stages:
            base = expand(stage.base, global_args)
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
            keys, diff_ids = imported_key_map(config_desc.get("mediaType"), config)
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
            parent_stage = dockerfile.stage(expand(stage.base, global_args))
            if parent_stage is None:  # not reached: needed_stages() resolved FROM <stage>
                raise self.fail(None, f"FROM {stage.base}: no such stage (line {stage.line})")
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
        # What a stage's instructions see: its own ARGs (a global ARG only once redeclared in
        # the stage), and ENV over ARG of the same name (the reference, "Using ARG variables").
        args: dict[str, str] = {}
        for ins in stage.instructions:
            scope = {**args, **state.env}
            if ins.cmd == "ARG":
                for name_, default in arg_declarations(ins.args):
                    if name_ in self.args.build_args:
                        args[name_] = self.args.build_args[name_]
                    elif default is not None:
                        args[name_] = expand(default, {**args, **state.env})
                    else:
                        args[name_] = global_args.get(name_, "")
                    state.key = chain_key(state.key, f"ARG {name_}={args[name_]}")
                continue
            if ins.cmd not in FS_STEPS:
                try:
                    apply_metadata(state, ins, scope)
                except DockerfileError as exc:
                    raise self.fail(None, str(exc)) from None
                continue
            step_no += 1
            name = f"[{stage.display} {step_no}/{fs_total}] {ins.text}"
            await self._fs_step(state, ins, name, scope, tree, states, dockerfile)
        return state

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
            path = expand(ins.args, scope)
            workdir = path if path.startswith("/") else workdir.rstrip("/") + "/" + path
            key = chain_key(state.key, ins.text)
            state.config["WorkingDir"] = workdir
        elif ins.cmd in ("COPY", "ADD"):
            exec_form = ins.json_args()
            if exec_form is None:
                words = expand_words(ins.args, scope)
            else:
                words = [expand(word, scope) for word in exec_form]
            if len(words) < 2:
                raise self.fail(v, f"{ins.cmd} requires at least two arguments (source and dest)")
            sources, dest = words[:-1], words[-1]
            if ins.cmd == "ADD" and any(re.match(r"^[a-z]+://", s) for s in sources):
                raise self.fail(
                    v, "ADD from a URL is not supported by the sandbox's Cloud Build executor"
                )
            if "from" in ins.flags:
                src_stage = dockerfile.stage(ins.flags["from"])
                if src_stage is None:  # not reached: needed_stages() resolved COPY --from
                    raise self.fail(v, f"COPY --from={ins.flags['from']}: no such stage")
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

    async def _export(self, final: StageState, states: list[StageState]) -> BuildOutput:
        inline = any(c["type"] == "inline" for c in self.args.cache_to)
        config = image_config(final, self.args.labels, inline)
        raw_config = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        images: list[dict[str, str]] = []
        digest = None
        if self.args.push and self.args.tags:
            v = self.progress.vertex("exporting to image")
            v.line("exporting layers done")
            for tag in self.args.tags:
                repo, reference = self._image_ref(tag, "--tag")
                try:
                    await push_layers(self.registry, repo, final.layers)
                    config_digest = await self.registry.put_blob(repo, raw_config)
                    manifest = oci_manifest(
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
            keys, layers = registry_cache_map(chosen)
            cache_config = {"keys": keys, "diff_ids": [lay.diff_id for lay in layers]}
            raw = json.dumps(cache_config, sort_keys=True, separators=(",", ":")).encode()
            repo, reference = self._image_ref(spec["ref"], "--cache-to")
            try:
                await push_layers(self.registry, repo, layers)
                cfg_digest = await self.registry.put_blob(repo, raw)
                cache_digest = await self.registry.put_manifest(
                    repo, reference, oci_manifest(cfg_digest, len(raw), layers, CACHE_CONFIG)
                )
            except RegistryFailure as exc:
                raise self.fail(v, f"failed to export cache to {spec['ref']}: {exc}") from None
            v.line(f"writing cache manifest {cache_digest} done")
            v.done()
            exports.append({"ref": spec["ref"], "digest": cache_digest})
        return BuildOutput(digest, images, self.steps, exports, config)
