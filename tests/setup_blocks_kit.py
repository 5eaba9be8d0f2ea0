"""The blocks `shipyard setup` makes (target `default`, build settings and cache tiers `sandbox`),
kept across a test that rewrites them (`shipyard init` on a service of its own), so that a later
test of the same xdist worker, on the same Prefect server, meets setup's own page-service target."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def setup_blocks_kept() -> Iterator[None]:
    from prefect.exceptions import ObjectNotFound

    from shipyard.blocks.build_settings import BuildSettings
    from shipyard.blocks.cache_tiers import CacheTiers
    from shipyard.blocks.release_target import ReleaseTarget
    from shipyard.deployments.demo.sandbox_setup import BUILD_BLOCK, TARGET_BLOCK, TIERS_BLOCK

    kinds = ((ReleaseTarget, TARGET_BLOCK), (BuildSettings, BUILD_BLOCK), (CacheTiers, TIERS_BLOCK))
    before = {}
    for kind, name in kinds:
        try:
            before[name] = kind.load(name)
        except (ValueError, ObjectNotFound):
            before[name] = None
    try:
        yield
    finally:
        for kind, name in kinds:
            saved = before[name]
            if saved is None:
                with contextlib.suppress(ValueError, ObjectNotFound):
                    kind.delete(name)
                continue
            # A copy without the loaded document's id: saved by name (a test may have deleted
            # and re-created the document, whose old id would then answer 404).
            type(saved).model_validate(saved.model_dump()).save(name, overwrite=True)
