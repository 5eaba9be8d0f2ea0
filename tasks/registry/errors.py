"""The errors the registry client raises; each says which registry and what to do.

Each is a PermanentError or a TransientError (tasks/errors.py), so the pipeline's retry policy
classifies them without knowing this package.
"""

from __future__ import annotations

from tasks.errors import PermanentError, TransientError


class RegistryError(Exception):
    """Base of the errors raised here; `registry` is the host the error is about."""

    registry: str = ""


class InvalidReference(RegistryError, PermanentError, ValueError):
    """A malformed image reference."""


class NotFound(RegistryError, PermanentError):
    """404: unknown manifest/tag (MANIFEST_UNKNOWN), repository (NAME_UNKNOWN) or blob."""

    def __init__(self, message: str, registry: str, code: str) -> None:
        super().__init__(message)
        self.registry, self.code = registry, code


class RegistryAuthError(RegistryError, PermanentError):
    """401/403: never retried; names the registry and where the credentials came from."""


class RegistryUnavailable(RegistryError, TransientError):
    """429/5xx or a broken connection, after the retries ran out (or before, if raised inside)."""


class RegistryRequestError(RegistryError, PermanentError):
    """Any other refusal (4xx) by the registry."""


class ManifestTooLarge(RegistryError, PermanentError):
    """A manifest over MAX_MANIFEST_BYTES (the limit registries themselves apply)."""


class UnsupportedMediaType(RegistryError, PermanentError):
    """A manifest type Shipyard cannot copy faithfully (schema 1, unknown types, nested index)."""


class DigestMismatch(RegistryError, PermanentError):
    """Bytes received do not hash to the digest that names them."""


class PlatformNotFound(RegistryError, PermanentError):
    """None of the requested platforms is in the source index."""
