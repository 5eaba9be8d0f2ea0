"""An OCI distribution client on httpx: references, auth, manifests, streaming blob copy.

A thin wrapper around one outside system (any registry speaking the distribution API: the CNCF
registry, Docker Hub, GHCR, Artifact Registry). It knows nothing of the pipeline. One module per
concern; every public name is re-exported here, so `from shipyard.tasks.registry import X` keeps working:

- references: image references parsed like docker (`ImageRef`, `parse_reference`).
- errors: the `RegistryError` family (permanent or transient, for tasks/errors.py).
- auth: `RegistryCredentials` (password a pydantic SecretStr) and the Basic/Bearer auth flow.
- manifests: media types, `Manifest`/`Descriptor` with their original bytes, platforms, configs.
- transport: the TLS context and the wide-read httpx transport.
- client: `RegistryClient`, one host: requests with retries, manifest and blob endpoints.
- retry: the retry budget (seconds, not a count) and the registry's Retry-After.
- copy: `plan_image`, `copy_image`, `copy_blob`, `tag_image`.

Credential loaders from Prefect blocks live in blocks/registry_credentials.py.
Nothing here writes to the local disk, and memory stays at a few chunks per blob in flight.
"""

from shipyard.tasks.registry.auth import RegistryAuth, RegistryCredentials, parse_challenge
from shipyard.tasks.registry.client import RegistryClient
from shipyard.tasks.registry.copy import (
    PIPE_DEPTH,
    CopyStats,
    ImagePlan,
    ProgressFn,
    copy_blob,
    copy_image,
    plan_image,
    tag_image,
)
from shipyard.tasks.registry.errors import (
    DigestMismatch,
    InvalidReference,
    ManifestTooLarge,
    NotFound,
    PlatformNotFound,
    RegistryAuthError,
    RegistryError,
    RegistryRequestError,
    RegistryUnavailable,
    UnsupportedMediaType,
)
from shipyard.tasks.registry.manifests import (
    ACCEPT,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    IMAGE_TYPES,
    INDEX_TYPES,
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    SUPPORTED_TYPES,
    Descriptor,
    Manifest,
    config_env,
    config_labels,
    parse_manifest,
    platform_matches,
    platform_of_config,
    sha256_digest,
)
from shipyard.tasks.registry.references import DOCKER_HUB, ImageRef, parse_reference
from shipyard.tasks.registry.retry import DEFAULT_RETRY_BUDGET, RetryBudget, parse_retry_after
from shipyard.tasks.registry.transport import PIPE_CHUNK, USER_AGENT

__all__ = [
    "ACCEPT",
    "DEFAULT_RETRY_BUDGET",
    "DOCKER_HUB",
    "DOCKER_LIST",
    "DOCKER_MANIFEST",
    "IMAGE_TYPES",
    "INDEX_TYPES",
    "MAX_CONFIG_BYTES",
    "MAX_MANIFEST_BYTES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "PIPE_CHUNK",
    "PIPE_DEPTH",
    "SUPPORTED_TYPES",
    "USER_AGENT",
    "CopyStats",
    "Descriptor",
    "DigestMismatch",
    "ImagePlan",
    "ImageRef",
    "InvalidReference",
    "Manifest",
    "ManifestTooLarge",
    "NotFound",
    "PlatformNotFound",
    "ProgressFn",
    "RegistryAuth",
    "RegistryAuthError",
    "RegistryClient",
    "RegistryCredentials",
    "RegistryError",
    "RegistryRequestError",
    "RegistryUnavailable",
    "RetryBudget",
    "UnsupportedMediaType",
    "config_env",
    "config_labels",
    "copy_blob",
    "copy_image",
    "parse_challenge",
    "parse_manifest",
    "parse_reference",
    "parse_retry_after",
    "plan_image",
    "platform_matches",
    "platform_of_config",
    "sha256_digest",
    "tag_image",
]
