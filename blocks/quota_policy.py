"""Whether a release asks for GPU quota when no region has it, and how long it waits."""

from __future__ import annotations

from pydantic import Field

from shipyard.blocks.revision_templates import _Model


class QuotaPolicy(_Model):
    """Whether to ask for GPU quota when no region has it, and how long to wait for a decision."""

    request: bool = Field(
        default=True,
        title="Request quota",
        description="File QuotaPreferences when no region has GPU quota",
    )
    preferred_value: int = Field(
        default=1, ge=1, title="Preferred value", description="GPUs to ask for per region"
    )
    budget_s: float = Field(
        default=600.0,
        ge=0,
        title="Budget (s)",
        description="Total time to wait for quota decisions",
    )
    poll_initial_s: float = Field(
        default=5.0,
        gt=0,
        title="First poll (s)",
        description="First delay between reads of a quota preference; doubles",
    )
    poll_max_s: float = Field(
        default=60.0,
        gt=0,
        title="Longest poll (s)",
        description="Longest delay between reads of a quota preference",
    )
    justification: str = Field(
        default="Cloud Run GPU inference service (Shipyard release)",
        title="Justification",
        description="Why the quota is needed (sent with the QuotaPreference)",
    )
    contact_email: str | None = Field(
        default=None,
        title="Contact email",
        description="Who Google contacts about the request (Cloud Quotas asks for one)",
    )
