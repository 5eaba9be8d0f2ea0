"""The sandbox playing "Docker Hub": seed an upstream NVIDIA-like CUDA image into a registry.

There is no internet here, so `nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04` is a small
synthetic image whose config reads like NVIDIA's (env `CUDA_VERSION`, `NV_CUDNN_VERSION`, label
`com.nvidia.cudnn.version`, NVIDIA's entrypoint) over one small real layer. The mirror flow
reads exactly those fields from the config, so it cannot tell the difference.

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

from sandbox.oci import OCI_CONFIG, OCI_MANIFEST, SandboxRegistry, make_layer

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
) -> dict[str, Any]:
    """An image config shaped like nvidia/cuda's (cudnn=None: a CUDA image without cuDNN)."""
    env = [
        "PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/bin:/bin",
        f"CUDA_VERSION={cuda}",
    ]
    labels = {"maintainer": "NVIDIA CORPORATION <cudatools@nvidia.com>"}
    if cudnn:
        env.append(f"NV_CUDNN_VERSION={cudnn}")
        labels["com.nvidia.cudnn.version"] = cudnn
    return {
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": env,
            "Labels": labels,
            "Entrypoint": ["/opt/nvidia/nvidia_entrypoint.sh"],
        },
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
) -> SeededImage:
    """Push the synthetic CUDA image to `registry_url` (http://host:port) as repo:tag."""
    reg = SandboxRegistry(registry_url)
    try:
        version = json.dumps({"cuda": {"name": "CUDA SDK", "version": cuda}}).encode()
        layer = make_layer({"/usr/local/cuda/version.json": (version, 0o644)})
        assert layer.data is not None  # make_layer returns the blob it made
        await reg.put_blob(repo, layer.data)
        config = json.dumps(
            nvidia_config([layer.diff_id], cudnn=cudnn, cuda=cuda), sort_keys=True
        ).encode()
        config_digest = await reg.put_blob(repo, config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}],
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
) -> SeededImage:
    """Synchronous `apush_cuda_image` (call it where no event loop runs)."""
    return asyncio.run(apush_cuda_image(registry_url, repo, tag, cuda=cuda, cudnn=cudnn))
