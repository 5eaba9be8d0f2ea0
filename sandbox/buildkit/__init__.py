"""The sandbox's `docker buildx build`: a BuildKit stand-in that builds real images into the registry.

What it does with a build request (the arguments of a `gcr.io/cloud-builders/docker` buildx step):

- Parses the Dockerfile (with its own reader, sandbox/buildkit/dockerfile.py, not the
  pipeline's) and the buildx flags; an unknown flag, stage, instruction or a missing file fails
  the build with BuildKit's own wording.
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

from sandbox.buildkit.build_state import BuildFailed, BuildOutput, BuildPolicy
from sandbox.buildkit.builder import Builder
from sandbox.buildkit.buildx_args import BuildxArgs, parse_buildx_build

__all__ = [
    "BuildFailed",
    "BuildOutput",
    "BuildPolicy",
    "Builder",
    "BuildxArgs",
    "parse_buildx_build",
]
