"""The sandbox playing "Docker Hub": seed an upstream NVIDIA-like CUDA image into a registry.

There is no internet here, so `nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04` is an image whose
config reads like NVIDIA's (env `CUDA_VERSION`, `NV_CUDNN_VERSION`, label
`com.nvidia.cudnn.version`) over either the base root filesystem built from Debian packages
(sandbox/engine/rootfs.py: a real filesystem with python3, so builds and containers run on it)
or, without a container engine, one small synthetic layer. The mirror flow reads exactly those
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
    env = [
        "PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/bin:/bin",
        f"CUDA_VERSION={cuda}",
    ]
    labels = {"maintainer": "NVIDIA CORPORATION <cudatools@nvidia.com>"}
    config: dict[str, Any] = {"Env": env, "Labels": labels}
    if entrypoint:
        config["Entrypoint"] = ["/opt/nvidia/nvidia_entrypoint.sh"]
    if cudnn:
        env.append(f"NV_CUDNN_VERSION={cudnn}")
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
