"""The chain of a promoted release: what `promoted_from` says, and the event a passed release
sends so that the next stage can promote it (deployments/automations.py).

`promoted_from` is "TARGET-BLOCK/FLOW-RUN-ID": the previous stage's ReleaseTarget block and the
run of its release that passed (block names hold no '/', a flow run id is a UUID).

`shipyard.release.passed` is emitted by a release that ended `released` (its canary passed and
it serves 100%), after its ledger row is written: its resource is the target block
(`shipyard.release-target.<block>`, labelled with the environment), its payload the git tag,
the image and the flow run (the ledger row holds the digest). The release's own
`shipyard.release.released` names the Cloud Run service only, which staging and production of
one service share; an automation that promotes must know which stage passed.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from prefect.events import emit_event

__all__ = [
    "PASSED_EVENT",
    "TARGET_RESOURCE",
    "announce_passed",
    "check_promoted_from",
    "promoted_from_text",
    "split_promoted_from",
]

PASSED_EVENT = "shipyard.release.passed"
TARGET_RESOURCE = "shipyard.release-target."
_BLOCK = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def promoted_from_text(block: str, flow_run_id: str | None) -> str:
    return f"{block}/{flow_run_id or ''}"


def split_promoted_from(text: str) -> tuple[str, str]:
    """(block, flow run id) of a `promoted_from`; ("", "") for an empty one."""
    block, _, run = text.partition("/")
    return block, run


def check_promoted_from(text: str) -> None:
    """Refuse a `promoted_from` that is not "TARGET-BLOCK/FLOW-RUN-ID" (empty is fine)."""
    if not text:
        return
    block, run = split_promoted_from(text)
    ok = bool(_BLOCK.match(block)) and "/" in text
    if ok and run:
        try:
            uuid.UUID(run)
        except ValueError:
            ok = False
    if not ok:
        raise ValueError(
            f"promoted_from={text!r} is not TARGET-BLOCK/FLOW-RUN-ID (e.g. "
            "digit-staging/0b6f...-uuid): leave it empty for a release from the git tag, "
            "`shipyard promote-release` fills it in"
        )


def announce_passed(target_block: str, environment: str | None, result: Any) -> None:
    """Emit `shipyard.release.passed` for a release that ended `released` (see the module
    docstring); nothing for a target without a block name (nothing could promote from it)."""
    if not target_block or getattr(result, "outcome", None) != "released":
        return
    try:
        emit_event(
            event=PASSED_EVENT,
            resource={
                "prefect.resource.id": f"{TARGET_RESOURCE}{target_block}",
                "prefect.resource.name": target_block,
                "shipyard.environment": environment or "",
                "shipyard.service": result.service,
            },
            payload={
                "git_tag": result.git_tag,
                "image": result.image,
                "flow_run_id": result.flow_run_id,
                "noop": result.noop,
            },
        )
    except Exception as exc:  # noqa: BLE001 - the release passed; a missed event is only logged
        logging.getLogger("shipyard.promotion").warning(
            "%s not sent for %s: %s", PASSED_EVENT, target_block, exc
        )
