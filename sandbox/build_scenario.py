"""The scenario's `builds` section, typed (the scenario file keeps it as a free-form mapping).

    builds:
      fail_step: "[python-deps"      # a build step whose name contains this fails (when it runs,
                                     #   i.e. is not CACHED), e.g. "RUN npm ci" or "[builder 3/3]"
      message: "No space left on device"   # what the failing step prints
      exit_code: 1
      step_delay_ms: 0               # each executed (not cached) step takes this long
      queue_ms: 0                    # how long a build stays QUEUED
      hold: false                    # builds stay QUEUED until POST /_sandbox/builds/release
      log_delay_ms: 300              # a log line reaches Cloud Logging this much later
      reject_message: null           # create_build answers 400 INVALID_ARGUMENT with this

Validated with extra keys refused, and the message names `builds.<key>` and what is allowed.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class BuildScenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fail_step: str | None = Field(default=None, description="substring of a BuildKit step name")
    message: str = "forced failure"
    exit_code: int = Field(default=1, ge=1, le=255)
    step_delay_ms: int = Field(default=0, ge=0)
    queue_ms: int = Field(default=0, ge=0)
    # Tests: keep a build running (QUEUED) until the test lets it go, e.g. until another run has
    # looked at it (SandboxAdmin.release_builds); a reset holds again.
    hold: bool = False
    # Build logs reach Cloud Logging late (seconds on Google): never at once in the sandbox.
    log_delay_ms: int = Field(default=300, ge=0)
    reject_message: str | None = None


def parse_build_scenario(data: object) -> BuildScenario:
    """Raise ValueError naming `builds.<key>` and the allowed keys."""
    if not data:
        return BuildScenario()
    try:
        return BuildScenario.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"key 'builds.{'.'.join(str(p) for p in e['loc'])}': {e['msg']}" for e in exc.errors()
        )
        allowed = ", ".join(BuildScenario.model_fields)
        raise ValueError(f"scenario: {problems}. Keys allowed under builds: {allowed}") from None
