"""Cache keys: one per instruction, chained from the parent key, and the key maps caches carry.

A key is sha256 of the parent key, the instruction text (after ARG/ENV substitution where Docker
substitutes) and, for COPY/ADD, the copied files' content. Cache images carry a key map
{key: layer index or None}: an inline cache in the image config under INLINE_KEY, a registry cache
as a manifest whose config (application/vnd.buildkit.cacheconfig.v0) is that map.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from sandbox.buildkit.build_state import LayerRef, StageState
from sandbox.oci import CACHE_CONFIG

INLINE_KEY = "shipyard.buildcache.v0"
# Keys that carry state into later steps (enter the chain); the rest is image metadata only.
CHAIN_METADATA = frozenset({"ARG", "ENV", "USER", "SHELL"})


def chain_key(*parts: str) -> str:
    return "sha256:" + hashlib.sha256("\0".join(parts).encode()).hexdigest()


def imported_key_map(
    config_media_type: str | None, config: dict[str, Any]
) -> tuple[dict[str, int | None], list[str]]:
    """(keys, diff_ids) of a cache image: a registry cache's config, or an image's inline map."""
    if config_media_type == CACHE_CONFIG:
        return config.get("keys", {}), config.get("diff_ids", [])
    keys = (config.get(INLINE_KEY) or {}).get("keys", {})
    return keys, (config.get("rootfs") or {}).get("diff_ids", [])


def inline_key_map(final: StageState) -> dict[str, int | None]:
    """The final image's keys, indexed into its own layers (for `--cache-to type=inline`)."""
    index = {lay.digest: i for i, lay in enumerate(final.layers)}
    keys: dict[str, int | None] = {}
    for st in final.chain():
        for key, lay in st.entries:
            keys[key] = index[lay.digest] if lay is not None else None
    return keys


def registry_cache_map(
    chosen: Iterable[StageState],
) -> tuple[dict[str, int | None], list[LayerRef]]:
    """Keys of the chosen stages and the layers they cover, each layer once (registry export)."""
    layers: list[LayerRef] = []
    keys: dict[str, int | None] = {}
    seen: dict[str, int] = {}
    for st in chosen:
        for key, lay in st.entries:
            if lay is not None and lay.digest not in seen:
                seen[lay.digest] = len(layers)
                layers.append(lay)
            keys[key] = seen[lay.digest] if lay is not None else None
    return keys, layers
