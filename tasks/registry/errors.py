"""The errors the registry client raises; each says which registry and what to do.

Each is a PermanentError or a TransientError (tasks/errors.py), so the pipeline's retry policy
classifies them without knowing this package.
"""

from __future__ import annotations

from shipyard.tasks.errors import PermanentError, TransientError


class RegistryError(Exception):
    """Base of the errors raised here; `registry` is the host the error is about, `code` the
    registry's own error code (distribution spec: MANIFEST_UNKNOWN, DENIED, ...) when it sent one."""

    def __init__(self, message: str, registry: str = "", code: str = "") -> None:
        super().__init__(message)
        self.registry, self.code = registry, code


class InvalidReference(RegistryError, PermanentError, ValueError):
    """A malformed image reference."""


class NotFound(RegistryError, PermanentError):
    """404: unknown manifest/tag (MANIFEST_UNKNOWN), repository (NAME_UNKNOWN) or blob."""


class RegistryAuthError(RegistryError, PermanentError):
    """401/403: never retried; names the registry and where the credentials came from."""


class RegistryUnavailable(RegistryError, TransientError):
    """429/5xx or a broken connection, after the retry budget ran out (or before, if raised
    inside). `retry_after`: the seconds the registry asked to wait (its Retry-After header)."""

    retry_after: float | None = None


class RegistryRequestError(RegistryError, PermanentError):
    """A refusal: any other 4xx, or a 5xx whose error code names a permanent condition (see
    PERMANENT_CODES). Never retried; the message carries the registry's code."""


# Distribution-spec error codes that no retry can cure, whatever the HTTP status they come with:
# distribution answers MANIFEST_BLOB_UNKNOWN as a 500 when its storage driver wraps the lookup
# error (error codes: opencontainers/distribution-spec spec.md "Error Codes"; 500s carrying codes:
# distribution/distribution#2152, #3122). Retrying them only delays the verdict.
PERMANENT_CODES = frozenset(
    {
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "DENIED",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "TAG_INVALID",
        "UNAUTHORIZED",
        "UNSUPPORTED",
    }
)


class ManifestTooLarge(RegistryError, PermanentError):
    """A manifest over MAX_MANIFEST_BYTES (the limit registries themselves apply)."""


class UnsupportedMediaType(RegistryError, PermanentError):
    """A manifest type Shipyard cannot copy faithfully (schema 1, unknown types, nested index)."""


class DigestMismatch(RegistryError, PermanentError):
    """Bytes received do not hash to the digest that names them."""


class PlatformNotFound(RegistryError, PermanentError):
    """None of the requested platforms is in the source index."""
