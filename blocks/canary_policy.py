"""How a canary revision is judged before it gets any traffic: the `CanaryPolicy` block.

Default: 3 runs of a real page with `X-Internal-Token`, HTTP 200, `x-fallback-used: 0`, at least
30% faster than the CPU baseline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field

# The canary's default sample page ships inside the package (package data), so an installed
# worker has it; nothing is read from a checkout at run time.
PACKAGED_SAMPLE_IMAGE = Path(__file__).resolve().parent / "samples" / "page.png"
LEGACY_SAMPLE_IMAGE = "examples/sample-pages/page.png"  # what older saved policies hold
DEFAULT_TOKEN_SECRET = "shipyard-internal-token"  # noqa: S105 - a block *name*, not a secret


class CanaryPolicy(Block):
    """How a canary revision is judged before it gets any traffic."""

    _block_type_name = "Shipyard Canary Policy"
    _block_type_slug = "shipyard-canary-policy"
    _description = (
        "Smoke test of a canary revision on a real sample page: status, headers, speed-up over "
        "the CPU baseline, and the revision's logs, before it gets any traffic."
    )

    sample_image: str | None = Field(
        default=None,
        description="Path of the sample page image on the worker (relative: from the working "
        "directory); empty: the scanned printed page shipped with Shipyard",
    )
    health_path: str | None = Field(
        default="/health",
        description="GET first (verifies /health after the deploy; also starts the instance)",
    )
    method: Literal["POST", "PUT"] = "POST"
    path: str = "/internal/translate/page"
    content_type: str | None = Field(default=None, description="default: from the file suffix")
    auth_header: str = "X-Internal-Token"
    token_secret: str | None = Field(
        default=DEFAULT_TOKEN_SECRET,
        description="Name of the Prefect Secret block holding the internal token (None: no header)",
    )
    runs: int = Field(default=3, ge=1, le=50)
    expected_status: int = 200
    required_headers: dict[str, str] = Field(
        default={"x-fallback-used": "0"}, description="headers the answer must carry, exactly"
    )
    p95_limit_ms: float = Field(
        default=90_000, gt=0, description="single-page p95 limit (default 90 s)"
    )
    min_speedup: float | None = Field(
        default=0.30,
        ge=0,
        lt=1,
        description="1 - canary median / CPU baseline must reach this (default: >= 30%); "
        "None: not checked",
    )
    baseline_max_age_days: float = Field(
        default=30.0,
        gt=0,
        description="re-measure the recorded CPU baseline when it is older than this (it is "
        "also re-measured whenever the CPU template changes)",
    )
    check_image: bool = Field(
        default=True, description="response decodes as an image of the input's size"
    )
    log_signatures: list[str] = Field(
        default=[
            "Failed to create CUDAExecutionProvider",
            "undefined symbol",
            # Cloud Run's OOM lines: "Memory limit of 16384 MiB exceeded with 16420 MiB used.
            # Consider increasing the memory limit, ..." then "Container terminated on signal
            # 9." (dart-lang/pub-dev#9554, SkyTruth/cerulean-cloud#90)
            "Memory limit of",
            "Container terminated on signal 9",
            "UnicodeEncodeError",
        ],
        description="a canary whose revision logs contain one of these fails",
    )
    log_settle_s: float = Field(
        default=10.0, ge=0, description="wait for log ingestion before reading the canary window"
    )
    request_timeout_s: float = Field(default=900.0, gt=0)
    retry_statuses: list[int] = Field(
        default=[429, 502, 503, 504],
        description="answers retried as transient (a 500 is the app failing: not retried)",
    )
    retries: int = Field(default=3, ge=0, le=20)
    retry_delay_s: float = Field(default=1.0, ge=0)

    def sample_path(self) -> Path:
        if not self.sample_image or self.sample_image == LEGACY_SAMPLE_IMAGE:
            return PACKAGED_SAMPLE_IMAGE
        return Path(self.sample_image).absolute()
