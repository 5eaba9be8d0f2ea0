"""Whether a release asks for GPU quota when no region has it, and how long it waits."""

from __future__ import annotations

from pydantic import Field

from shipyard.blocks.revision_templates import _Model


class QuotaPolicy(_Model):
    """Whether to ask for GPU quota when no region has it, and how long to wait for a decision."""

    request: bool = Field(default=True, description="file QuotaPreferences when no region fits")
    preferred_value: int = Field(default=1, ge=1)
    budget_s: float = Field(default=600.0, ge=0, description="total time to wait for decisions")
    poll_initial_s: float = Field(default=5.0, gt=0)
    poll_max_s: float = Field(default=60.0, gt=0)
    justification: str = "Cloud Run GPU inference service (Shipyard release)"
    contact_email: str | None = None
