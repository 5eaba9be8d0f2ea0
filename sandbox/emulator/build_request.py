r"""What a Cloud Build create may carry and what Google refuses in it (400 INVALID_ARGUMENT).

The Build's fields (unknown ones refused as Google's JSON parser does), enum numbers named,
output-only fields dropped (`normalise`); then (`validate`): at least one step with a name, a
source (gitSource url or storageSource), `options.diskSizeGb` ≤ 4000, timeout ≤ 24 h, build tags
of Cloud Build's form; scenario `builds.reject_message` rejects every create with that message.

Build tags: `invalid build: invalid build tag "ccm/v32.2.0": must match format
"^[\w][\w.-]{0,127}$"` (INVALID_ARGUMENT, quoted from real submits in
kubernetes/cloud-provider-gcp#810 and googleforgames/global-multiplayer-demo#184, where gcloud
prints the JSON-escaped form). Cloud Build is written in Go, whose `\w` is ASCII: [0-9A-Za-z_].
"""

from __future__ import annotations

import functools
import re
from typing import Any

from sandbox.build_scenario import BuildScenario
from sandbox.emulator.core import ApiError, duration_s

MAX_DISK_GB = 4000
MAX_TIMEOUT_S = 24 * 3600
DEFAULT_TIMEOUT_S = 600
BUILD_TAG_FORMAT = r"^[\w][\w.-]{0,127}$"
_BUILD_TAG = re.compile(BUILD_TAG_FORMAT, re.ASCII)


def build_timeout_s(value: Any, default: int) -> float:
    return duration_s(value, default, "invalid build: timeout")


# Build fields a request may carry (the Build proto); anything else is refused as Google does.
BUILD_FIELDS = frozenset(
    [
        "name",
        "id",
        "projectId",
        "status",
        "statusDetail",
        "source",
        "steps",
        "results",
        "createTime",
        "startTime",
        "finishTime",
        "timeout",
        "images",
        "queueTtl",
        "artifacts",
        "logsBucket",
        "sourceProvenance",
        "buildTriggerId",
        "options",
        "logUrl",
        "substitutions",
        "tags",
        "secrets",
        "timing",
        "approval",
        "serviceAccount",
        "availableSecrets",
        "warnings",
        "gitConfig",
        "failureInfo",
        "dependencies",
    ]
)


# Enums arrive as integers (the clients send `enum-encoding=int`): answer with names. The
# numbers are the proto's (google/devtools/cloudbuild/v1/cloudbuild.proto: E2_HIGHCPU_8 = 5,
# E2_MEDIUM = 7, E2_STANDARD_2 = 11, CLOUD_LOGGING_ONLY = 5, NONE = 4), not positions: taken
# from the installed client's enum classes, imported on the first build request (the import
# costs seconds, so not at emulator start-up).
@functools.cache
def enum_names() -> dict[str, dict[int, str]]:
    """options field -> {proto number: name}, from google.cloud.devtools.cloudbuild_v1."""
    from google.cloud.devtools.cloudbuild_v1.types import BuildOptions

    return {
        key: {member.value: name for name, member in enum.__members__.items()}
        for key, enum in (
            ("machineType", BuildOptions.MachineType),
            ("logging", BuildOptions.LoggingMode),
        )
    }


def normalise(body: dict[str, Any]) -> dict[str, Any]:
    """Refuse unknown fields; enum integers become names; output-only fields are dropped."""
    unknown = sorted(set(body) - BUILD_FIELDS)
    if unknown:
        raise ApiError(
            400,
            f"Invalid JSON payload received. Unknown name \"{unknown[0]}\" at 'build': "
            "Cannot find field.",
        )
    build = {
        k: v
        for k, v in body.items()
        if k not in ("id", "status", "results", "createTime", "startTime", "finishTime", "timing")
    }
    options = dict(build.get("options") or {})
    for key, names in enum_names().items():
        value = options.get(key)
        if isinstance(value, int):
            if value not in names:
                raise ApiError(400, f"Invalid value at 'build.options.{key}' ({value})")
            options[key] = names[value]
        if options.get(key) in ("UNSPECIFIED", "LOGGING_UNSPECIFIED", 0):
            options.pop(key, None)
    if options:
        build["options"] = options
    if not isinstance(build.get("steps", []), list):
        raise ApiError(400, "Invalid value at 'build.steps': expected a list")
    build["steps"] = [
        {k: v for k, v in step.items() if k not in ("status", "timing", "pullTiming")}
        for step in build.get("steps") or []
        if isinstance(step, dict)
    ]
    return build


def validate(build: dict[str, Any], scenario: BuildScenario) -> None:
    if scenario.reject_message:
        raise ApiError(400, scenario.reject_message)
    steps = build.get("steps") or []
    if not steps:
        raise ApiError(400, "invalid build: steps: at least one build step is required")
    for i, step in enumerate(steps):
        if not step.get("name"):
            raise ApiError(
                400, f"invalid build: steps[{i}].name: a build step needs a builder image"
            )
    source = build.get("source") or {}
    git = source.get("gitSource") or {}
    if not (git.get("url") or source.get("storageSource")):
        raise ApiError(
            400,
            "invalid build: source: give source.gitSource {url, revision, dir} or "
            "source.storageSource {bucket, object}",
        )
    tags = build.get("tags") or []
    if not isinstance(tags, list):
        raise ApiError(400, "Invalid value at 'build.tags': expected a list")
    for tag in tags:
        if not isinstance(tag, str) or not _BUILD_TAG.match(tag):
            raise ApiError(
                400,
                f'invalid build: invalid build tag "{tag}": must match format "{BUILD_TAG_FORMAT}"',
            )
    disk = int((build.get("options") or {}).get("diskSizeGb") or 0)
    if disk > MAX_DISK_GB:
        raise ApiError(
            400,
            f"invalid build: options.diskSizeGb {disk} is over the maximum of {MAX_DISK_GB} GB",
        )
    if build_timeout_s(build.get("timeout"), DEFAULT_TIMEOUT_S) > MAX_TIMEOUT_S:
        raise ApiError(400, f"invalid build: timeout {build['timeout']} is over 24 hours")
