"""What a finished build writes to the registry: the image config, OCI manifests, layer blobs."""

from __future__ import annotations

from typing import Any

from sandbox.buildkit.build_state import LayerRef, StageState
from sandbox.buildkit.cache_keys import INLINE_KEY, inline_key_map
from sandbox.oci import OCI_MANIFEST, SandboxRegistry


def image_config(final: StageState, labels: dict[str, str], inline: bool) -> dict[str, Any]:
    """The OCI image config of the final stage (with the inline cache map when asked)."""
    cfg = dict(final.config)
    if labels:
        cfg["Labels"] = {**(cfg.get("Labels") or {}), **labels}
    config: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [lay.diff_id for lay in final.layers]},
        "history": final.history,
    }
    if inline:
        config[INLINE_KEY] = {"keys": inline_key_map(final)}
    return config


async def push_layers(registry: SandboxRegistry, repo: str, layers: list[LayerRef]) -> None:
    """Upload new layers; mount the ones already in the registry from their repository."""
    for lay in layers:
        if lay.data is not None:
            if not await registry.blob_exists(repo, lay.digest):
                await registry.put_blob(repo, lay.data)
            lay.repo = lay.repo or repo
        else:
            await registry.ensure_blob(repo, lay.digest, lay.repo or repo)


def oci_manifest(
    config_digest: str, config_size: int, layers: list[LayerRef], config_type: str
) -> dict[str, Any]:
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
