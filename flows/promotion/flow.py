"""`promote_release(target, git_tag, comment, by)`: stub, filled in by the promotion work."""

from __future__ import annotations

from prefect import flow


@flow(name="promote-release", flow_run_name="promote-{target}")
def promote_release(
    target: str = "default", git_tag: str = "", comment: str = "", by: str = ""
) -> str:
    """Release in `target` the digest that passed in the stage before it."""
    raise NotImplementedError("promotion is being built")
