"""The sandbox playing "Docker Hub": seed an upstream NVIDIA-like CUDA image into a registry.

There is no internet here, so `nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04` is an image whose
config reads like NVIDIA's (env `CUDA_VERSION`, `NV_CUDNN_VERSION`, label
`com.nvidia.cudnn.version`) over either the base root filesystem built from Debian packages
(sandbox/engine/rootfs.py: a real filesystem, without python3 like the real runtime image, so
builds and containers run on it) or, without a container engine, one small synthetic layer. The mirror flow reads exactly those
fields from the config, so it cannot tell the difference.

One piece of code for the demo (`shipyard demo` seeds the upstream, then mirrors it) and for the
tests that need such a base (tests/build, tests/release, and tests/mirror's config shape).
Pushed with the sandbox's own client (sandbox/oci.py), never with tasks/registry/: the seed
must not share code with the client the mirror tests exercise.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from sandbox.engine.rootfs import RootfsLayer
from sandbox.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, SandboxRegistry, make_layer

UPSTREAM_REPOSITORY = "nvidia/cuda"
UPSTREAM_TAG = "12.1.1-cudnn8-runtime-ubuntu22.04"
CUDA_VERSION = "12.1.1"
CUDNN_VERSION = "8.9.0.131"

# What the stand-in cannot match, said once before each sandbox build that runs for real
# (sandbox/engine/docker_build.py) so that a rehearsal that passes here is not read as proof for
# these two points.
STAND_IN_DIFFERENCE = (
    f"the sandbox's {UPSTREAM_REPOSITORY}:{UPSTREAM_TAG} is a stand-in: Debian 12 (bookworm), "
    "where NVIDIA's image is Ubuntu 22.04. Like the real one it has no python3 and declares "
    "NVIDIA's CUDA environment and library paths, but a python3 installed with apt here is "
    "3.11 with PEP 668's EXTERNALLY-MANAGED marker (pip needs --break-system-packages or "
    "PIP_BREAK_SYSTEM_PACKAGES=1), where Ubuntu 22.04's is 3.10 without one: wheels that need "
    "Python >= 3.11 install here and fail at pip install on Cloud Build"
)

# The environment of nvidia/cuda's base and runtime Dockerfiles for CUDA 12.x on Ubuntu 22.04
# (gitlab.com/nvidia/container-images/cuda dist/12.x/ubuntu2204/{base,runtime}/Dockerfile, as
# mirrored in wordslab-org/wordslab doc/infra/containers/nvidia-cuda-base-install.sh):
# `ENV PATH /usr/local/nvidia/bin:/usr/local/cuda/bin:${PATH}`, `ENV LD_LIBRARY_PATH
# /usr/local/nvidia/lib:/usr/local/nvidia/lib64`, `ENV NVIDIA_VISIBLE_DEVICES all`,
# `ENV NVIDIA_DRIVER_CAPABILITIES compute,utility`, `ENV NVARCH x86_64`.
NVIDIA_PATH = (
    "/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:"
    "/usr/bin:/sbin:/bin"
)
NVIDIA_LD_LIBRARY_PATH = "/usr/local/nvidia/lib:/usr/local/nvidia/lib64"


@dataclass(frozen=True)
class SeededImage:
    ref: str  # host:port/repository:tag
    repository: str  # host:port/repository
    tag: str
    digest: str


def nvidia_config(
    diff_ids: list[str],
    *,
    cudnn: str | None = CUDNN_VERSION,
    cuda: str = CUDA_VERSION,
    arch: str = "amd64",
    entrypoint: bool = True,
) -> dict[str, Any]:
    """An image config shaped like nvidia/cuda's (cudnn=None: a CUDA image without cuDNN)."""
    major_minor = "-".join(cuda.split(".")[:2])
    env = [
        f"PATH={NVIDIA_PATH}",
        "NVARCH=x86_64" if arch == "amd64" else "NVARCH=sbsa",
        f"NV_CUDA_COMPAT_PACKAGE=cuda-compat-{major_minor}",
        f"CUDA_VERSION={cuda}",
        f"LD_LIBRARY_PATH={NVIDIA_LD_LIBRARY_PATH}",
        "NVIDIA_VISIBLE_DEVICES=all",
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
    ]
    labels = {"maintainer": "NVIDIA CORPORATION <cudatools@nvidia.com>"}
    config: dict[str, Any] = {"Env": env, "Labels": labels}
    if entrypoint:
        config["Entrypoint"] = ["/opt/nvidia/nvidia_entrypoint.sh"]
    if cudnn:
        env.append(f"NV_CUDNN_VERSION={cudnn}")
        env.append(f"NV_CUDNN_PACKAGE_NAME=libcudnn{cudnn.split('.')[0]}")
        labels["com.nvidia.cudnn.version"] = cudnn
    return {
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "shipyard sandbox seed (synthetic upstream image)"}],
    }


async def apush_cuda_image(
    registry_url: str,
    repo: str = UPSTREAM_REPOSITORY,
    tag: str = UPSTREAM_TAG,
    *,
    cuda: str = CUDA_VERSION,
    cudnn: str | None = CUDNN_VERSION,
    rootfs: RootfsLayer | None = None,
) -> SeededImage:
    """Push the CUDA image to `registry_url` (http://host:port) as repo:tag: over `rootfs` when
    given (no NVIDIA entrypoint: the Debian filesystem has none), else the synthetic layer."""
    reg = SandboxRegistry(registry_url)
    try:
        if rootfs is not None:
            await reg.put_blob(repo, await asyncio.to_thread(rootfs.path.read_bytes))
            layer_desc = (rootfs.digest, rootfs.size, rootfs.diff_id)
            media_type = OCI_LAYER
        else:
            version = json.dumps({"cuda": {"name": "CUDA SDK", "version": cuda}}).encode()
            layer = make_layer({"/usr/local/cuda/version.json": (version, 0o644)})
            assert layer.data is not None  # noqa: S101 - make_layer returns the blob it made
            await reg.put_blob(repo, layer.data)
            layer_desc = (layer.digest, layer.size, layer.diff_id)
            media_type = layer.media_type
        config = json.dumps(
            nvidia_config([layer_desc[2]], cudnn=cudnn, cuda=cuda, entrypoint=rootfs is None),
            sort_keys=True,
        ).encode()
        config_digest = await reg.put_blob(repo, config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": media_type, "digest": layer_desc[0], "size": layer_desc[1]}],
        }
        digest = await reg.put_manifest(repo, tag, manifest)
    finally:
        await reg.aclose()
    repository = f"{reg.host}/{repo}"
    return SeededImage(ref=f"{repository}:{tag}", repository=repository, tag=tag, digest=digest)


def seed_cuda_image(
    registry_url: str,
    repo: str = UPSTREAM_REPOSITORY,
    tag: str = UPSTREAM_TAG,
    *,
    cuda: str = CUDA_VERSION,
    cudnn: str | None = CUDNN_VERSION,
    rootfs: RootfsLayer | None = None,
) -> SeededImage:
    """Synchronous `apush_cuda_image` (call it where no event loop runs)."""
    return asyncio.run(
        apush_cuda_image(registry_url, repo, tag, cuda=cuda, cudnn=cudnn, rootfs=rootfs)
    )
