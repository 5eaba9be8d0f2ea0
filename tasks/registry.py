"""An OCI distribution client on httpx: references, auth, manifests, streaming blob copy.

A thin wrapper around one outside system (any registry speaking the distribution API: the CNCF
registry, Docker Hub, GHCR, Artifact Registry). It knows nothing of the pipeline.

- Auth: anonymous, basic, and the bearer-token challenge (`WWW-Authenticate: Bearer realm=...`).
- Manifests: Docker schema 2, OCI manifest, OCI index, Docker manifest list; pushed with their
  original bytes, so digests are preserved; children before the index.
- Blobs: HEAD at the destination first; cross-repository mount within one registry; otherwise a
  streaming GET -> PUT with bounded parallelism. The sha256 is verified while streaming and the last
  chunk is held back until it matches, so a corrupt blob never completes an upload.
- Retries: transient failures (429, 5xx, resets, timeouts) are retried per request, and a blob whose
  stream breaks is re-copied on its own (never the whole image). 401/403 are never retried.

Nothing here writes to the local disk, and memory stays at a few chunks per blob in flight.
Prefect is imported lazily (credential blocks only), so the copy engine can run on its own.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import httpcore
import httpx

from tasks.errors import PermanentError, TransientError, backoff_delay, is_transient

log = logging.getLogger("shipyard.registry")

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_TYPES = frozenset({DOCKER_LIST, OCI_INDEX})
SUPPORTED_TYPES = IMAGE_TYPES | INDEX_TYPES
ACCEPT = ", ".join(sorted(SUPPORTED_TYPES))
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 8 * 1024 * 1024
# Blob bytes are read in pieces of up to this size: fewer, larger reads and writes cost far less
# Python per byte. Memory per blob in flight: PIPE_DEPTH queued + one held back + one being sent.
PIPE_CHUNK = 1024 * 1024
PIPE_DEPTH = 2  # pieces read ahead of the upload, per blob
DOCKER_HUB = "registry-1.docker.io"
USER_AGENT = "shipyard-mirror/0.1 (+httpx)"

ProgressFn = Callable[[int], None]  # called with a byte delta (negative when a retry rolls back)


# ---------------------------------------------------------------- errors


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


# ---------------------------------------------------------------- references

_DOMAIN = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
)
_DOMAIN_RE = re.compile(rf"^{_DOMAIN}(?::[0-9]{{1,5}})?$")
_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_LOOPBACK = ("localhost", "127.", "[::1]")
_REF_HELP = (
    "expected [REGISTRY[:PORT]/]REPOSITORY[:TAG][@sha256:DIGEST], lowercase repository, e.g. "
    "nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04 or europe-docker.pkg.dev/PROJECT/base/cuda"
)


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference. `registry` is the API host (Docker Hub is registry-1.docker.io)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest if pinned, else the tag (default latest)."""
        return self.digest or self.tag or "latest"

    @property
    def repo_name(self) -> str:
        """registry/repository, as written in image references (docker.io for Docker Hub)."""
        host = "docker.io" if self.registry == DOCKER_HUB else self.registry
        return f"{host}/{self.repository}"

    @property
    def base_url(self) -> str:
        # Docker's own rule: loopback registries speak plain HTTP, everything else HTTPS.
        scheme = "http" if self.registry.startswith(_LOOPBACK) else "https"
        return f"{scheme}://{self.registry}"

    def with_digest(self, digest: str) -> ImageRef:
        return ImageRef(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = self.repo_name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str, *, field: str = "reference") -> ImageRef:
    """Parse an image reference the way docker does; `field` names it in error messages."""
    raw = (text or "").strip()
    if raw.startswith("docker://"):
        raw = raw[len("docker://") :]

    def bad(why: str) -> InvalidReference:
        return InvalidReference(
            f"{field} {text!r} is not a valid image reference: {why}; {_REF_HELP}"
        )

    if not raw:
        raise bad("it is empty")
    digest = None
    if "@" in raw:
        raw, digest = raw.rsplit("@", 1)
        if not _DIGEST_RE.match(digest):
            raise bad(f"digest {digest!r} is not sha256: followed by 64 lowercase hex digits")
    tag = None
    slash = raw.rfind("/")
    colon = raw.rfind(":")
    if colon > slash:
        raw, tag = raw[:colon], raw[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise bad(f"tag {tag!r} must be 1-128 of [A-Za-z0-9_.-], not starting with . or -")
    parts = raw.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, parts[1:]
        if not _DOMAIN_RE.match(registry):
            raise bad(f"registry {registry!r} is not a host[:port]")
    else:
        registry, path = "docker.io", parts
    if registry in ("docker.io", "index.docker.io"):
        registry = DOCKER_HUB
        if len(path) == 1:
            path = ["library", *path]
    for component in path:
        if not _COMPONENT_RE.match(component):
            raise bad(
                f"repository part {component!r} must be lowercase letters and digits, "
                "separated by '.', '_', '__' or '-'"
            )
    repository = "/".join(path)
    if len(registry) + 1 + len(repository) > 255:
        raise bad("the name is longer than 255 characters")
    return ImageRef(registry, repository, tag, digest)


# ---------------------------------------------------------------- credentials


class Secret:
    """A string that never shows itself in repr/str (pydantic's SecretStr, minus the import cost)."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        getter = getattr(value, "get_secret_value", None)
        self._value = str(getter() if getter else value)

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


@dataclass(frozen=True)
class RegistryCredentials:
    """Username and password for one registry; `source` names where they came from (for messages)."""

    username: str
    password: Secret = field(repr=False)
    source: str = "explicit credentials"

    def __post_init__(self) -> None:
        if not isinstance(self.password, Secret):
            object.__setattr__(self, "password", Secret(self.password))


def _who(credentials: RegistryCredentials | None) -> str:
    """Where the credentials came from, for error messages (never the secret itself)."""
    return credentials.source if credentials else "no credentials (anonymous)"


async def credentials_from_docker_block(block_name: str) -> RegistryCredentials:
    """Load prefect-docker's DockerRegistryCredentials block `block_name`."""
    from prefect_docker import DockerRegistryCredentials

    try:
        block = await DockerRegistryCredentials.aload(block_name)
    except ValueError as exc:
        raise PermanentError(
            f"DockerRegistryCredentials block {block_name!r} was not found: create it in the "
            "Prefect UI (Blocks > Docker Registry Credentials) or with "
            "DockerRegistryCredentials(username=..., password=..., registry_url=...).save(NAME)"
        ) from exc
    return RegistryCredentials(
        block.username, block.password, f"DockerRegistryCredentials block {block_name!r}"
    )


async def credentials_from_gcp_block(block_name: str) -> RegistryCredentials:
    """Artifact Registry: user `oauth2accesstoken`, password an access token from GcpCredentials."""
    from prefect_gcp import GcpCredentials

    block = await GcpCredentials.aload(block_name)
    token = await asyncio.to_thread(block.get_access_token)
    return RegistryCredentials(
        "oauth2accesstoken",
        Secret(token),
        f"GcpCredentials block {block_name!r} (oauth2accesstoken)",
    )


# ---------------------------------------------------------------- auth


_PARAM_RE = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="...",scope="..."` -> ("bearer", {realm, service, scope})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _PARAM_RE.finditer(rest)
    }
    return scheme.lower(), params


class RegistryAuth(httpx.Auth):
    """Answers 401 challenges: Basic with the credentials, or Bearer via the token realm.

    The token is requested for every scope this client will need (so one token serves the whole
    copy) and then sent up front on each request. A streamed request body cannot be replayed, so a
    401 on one is returned to the caller (the blob copy retries that blob; the next request fetches
    a fresh token).
    """

    def __init__(self, registry: str, credentials: RegistryCredentials | None) -> None:
        self.registry = registry
        self.credentials = credentials
        self.scopes: list[str] = []
        self._basic = False
        self._bearer = False  # this registry has answered with a Bearer challenge
        self._token: str | None = None
        self._lock = asyncio.Lock()
        self._http: httpx.AsyncClient | None = None  # for the token realm, made on first challenge

    def expire_token(self) -> bool:
        """Forget the bearer token (the next request gets a new one).

        True when a fresh token can cure a 401 on a streamed request, i.e. the registry uses
        bearer tokens. That holds also when the request went out with no token at all because a
        concurrent upload had just expired it; a real denial then shows on the retry's first
        (replayable) request, which the auth flow answers with a new token and no retry.
        """
        self._token = None
        return self._bearer

    def add_scope(self, scope: str) -> None:
        if scope not in self.scopes:
            self.scopes.append(scope)

    def _basic_header(self) -> str:
        assert self.credentials is not None
        pair = f"{self.credentials.username}:{self.credentials.password.get_secret_value()}"
        return "Basic " + base64.b64encode(pair.encode()).decode()

    def _apply(self, request: httpx.Request) -> str | None:
        if self._token:
            request.headers["Authorization"] = f"Bearer {self._token}"
        elif self._basic and self.credentials:
            request.headers["Authorization"] = self._basic_header()
        return self._token

    async def async_auth_flow(self, request: httpx.Request):
        sent_token = self._apply(request)
        sent = request.headers.get("Authorization")
        response = yield request
        if response.status_code != 401:
            return
        if not isinstance(request.stream, httpx.ByteStream):
            return  # a streamed body is gone: let the caller retry with a fresh request
        scheme, params = parse_challenge(response.headers.get("www-authenticate", ""))
        if scheme == "basic" and self.credentials is not None:
            self._basic = True
        elif scheme == "bearer" and params.get("realm"):
            self._bearer = True
            async with self._lock:
                if self._token == sent_token:  # nobody refreshed it meanwhile
                    self._token = await self._fetch_token(params)
        else:
            return
        self._apply(request)
        if request.headers.get("Authorization") != sent:  # else: nothing new to try
            yield request

    async def _fetch_token(self, challenge: dict[str, str]) -> str:
        scopes = list(self.scopes)
        if challenge.get("scope") and challenge["scope"] not in scopes:
            scopes.append(challenge["scope"])
        query: list[tuple[str, str]] = [("scope", s) for s in scopes]
        if challenge.get("service"):
            query.insert(0, ("service", challenge["service"]))
        auth = None
        if self.credentials:
            query.append(("account", self.credentials.username))
            auth = httpx.BasicAuth(
                self.credentials.username, self.credentials.password.get_secret_value()
            )
        realm = challenge["realm"]
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=30, verify=_verify(realm), headers={"User-Agent": USER_AGENT}
            )
        for attempt in range(1, 5):
            try:
                resp = await self._http.get(realm, params=query, auth=auth)
            except httpx.TransportError as exc:
                if attempt == 4:
                    raise RegistryUnavailable(
                        f"token service {httpx.URL(realm).host} for registry {self.registry} is "
                        f"unreachable: {type(exc).__name__}"
                    ) from None
                await asyncio.sleep(backoff_delay(attempt, 0.2, 2.0))
                continue
            if resp.status_code in (401, 403):
                raise RegistryAuthError(
                    f"the token service {httpx.URL(realm).host} of registry {self.registry} refused "
                    f"a token for {' '.join(scopes) or 'the registry'} (HTTP {resp.status_code}) "
                    f"with {_who(self.credentials)}. Fix: check the username/password (or token) there."
                )
            if resp.status_code == 429 or resp.status_code >= 500:
                if attempt < 4:
                    await asyncio.sleep(backoff_delay(attempt, 0.2, 2.0))
                    continue
            if resp.status_code != 200:
                raise RegistryRequestError(
                    f"the token service {httpx.URL(realm).host} of registry {self.registry} "
                    f"answered HTTP {resp.status_code}"
                )
            body = resp.json()
            token = body.get("token") or body.get("access_token")
            if not token:
                raise RegistryRequestError(
                    f"the token service of {self.registry} returned no token"
                )
            return token
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


# ---------------------------------------------------------------- manifests


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: str | None = None
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Descriptor:
        plat = data.get("platform")
        platform = None
        if plat:
            platform = "/".join(
                p for p in (plat.get("os"), plat.get("architecture"), plat.get("variant")) if p
            )
        return cls(
            data.get("mediaType", ""),
            data["digest"],
            int(data["size"]),
            platform,
            tuple(data.get("urls") or ()),
        )


@dataclass(frozen=True)
class Manifest:
    """A manifest with its original bytes (pushed unchanged, so its digest is preserved)."""

    media_type: str
    raw: bytes = field(repr=False)
    digest: str

    @property
    def data(self) -> dict[str, Any]:
        return json.loads(self.raw)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    def children(self) -> list[Descriptor]:
        return [Descriptor.from_json(d) for d in self.data.get("manifests", [])]

    def config(self) -> Descriptor:
        return Descriptor.from_json(self.data["config"])

    def blobs(self) -> list[Descriptor]:
        """Config then layers, without non-distributable (foreign, URL-backed) layers."""
        layers = [Descriptor.from_json(d) for d in self.data.get("layers", [])]
        foreign = ("foreign", "nondistributable")
        kept = [d for d in layers if not (d.urls and any(f in d.media_type for f in foreign))]
        return [self.config(), *kept]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_manifest(raw: bytes, content_type: str, *, where: str) -> Manifest:
    """Check the media type (body first, header second) and compute the digest."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise UnsupportedMediaType(
            f"{where}: the manifest is not JSON (Content-Type {content_type!r})"
        ) from None
    media_type = (body.get("mediaType") if isinstance(body, dict) else None) or content_type.split(
        ";"
    )[0].strip()
    if media_type not in SUPPORTED_TYPES:
        hint = (
            " (Docker schema 1 is deprecated: re-push the image with a current client)"
            if "v1+" in media_type and "docker" in media_type
            else ""
        )
        raise UnsupportedMediaType(
            f"{where}: unsupported manifest media type {media_type!r}{hint}; Shipyard copies "
            f"{', '.join(sorted(SUPPORTED_TYPES))}"
        )
    return Manifest(media_type, raw, sha256_digest(raw))


def platform_of_config(config: dict[str, Any]) -> str:
    parts = (config.get("os"), config.get("architecture"), config.get("variant"))
    return "/".join(p for p in parts if p)


def platform_matches(wanted: str, have: str | None) -> bool:
    """linux/arm64 matches linux/arm64/v8; linux/arm64/v8 needs the variant."""
    if not have:
        return False
    want, got = wanted.split("/"), have.split("/")
    return got[: len(want)] == want or (
        want[:2] == got[:2] and len(got) == 2 and want[2:] == ["v8"]
    )


# ---------------------------------------------------------------- client


@cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process (loading the CA bundle costs 50-400 ms); honours
    SSL_CERT_FILE / SSL_CERT_DIR like httpx's default."""
    return httpx.create_ssl_context()


class _WideReadStream(httpcore.AsyncNetworkStream):
    """Reads up to PIPE_CHUNK per call instead of httpcore's 64 KiB: blob bytes then cost about a
    third less CPU (fewer trips through httpcore/anyio per megabyte)."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max(max_bytes, PIPE_CHUNK), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        return _WideReadStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _WideReadBackend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _WideReadStream(stream)

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _WideReadStream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _transport(url: str, max_connections: int) -> httpx.AsyncHTTPTransport:
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    transport = httpx.AsyncHTTPTransport(verify=_verify(url), limits=limits)
    pool = getattr(transport, "_pool", None)
    if isinstance(pool, httpcore.AsyncConnectionPool) and hasattr(pool, "_network_backend"):
        pool._network_backend = _WideReadBackend()  # httpx has no public knob; else: 64 KiB reads
    return transport


def _verify(url: str) -> ssl.SSLContext | bool:
    # Plain-HTTP (loopback) registries need no TLS context; a redirect from one to an https host
    # would go unverified, which a loopback registry (no TLS itself) does not protect against anyway.
    return _tls_context() if url.startswith("https://") else False


@dataclass
class CopyStats:
    blobs_copied: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    bytes_copied: int = 0
    bytes_total: int = 0
    manifests_pushed: int = 0
    retries: int = 0
    seconds: float = 0.0


class RegistryClient:
    """One registry (host). Use as `async with RegistryClient(...) as client:`."""

    def __init__(
        self,
        registry: str,
        credentials: RegistryCredentials | None = None,
        *,
        base_url: str | None = None,
        max_attempts: int = 6,
        backoff_base: float = 0.2,
        backoff_cap: float = 5.0,
        timeout: float = 60.0,
        max_connections: int = 16,
    ) -> None:
        self.registry = registry
        self.credentials = credentials
        self.max_attempts = max_attempts
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.retries = 0
        self.auth = RegistryAuth(registry, credentials)
        url = base_url or ImageRef(registry, "x").base_url
        self._http = httpx.AsyncClient(
            base_url=url,
            auth=self.auth,
            follow_redirects=True,
            transport=_transport(url, max_connections),
            timeout=httpx.Timeout(timeout, connect=10.0),
            headers={"User-Agent": USER_AGENT},
        )

    @classmethod
    def for_ref(
        cls, ref: ImageRef, credentials: RegistryCredentials | None = None, **kw: Any
    ) -> RegistryClient:
        return cls(ref.registry, credentials, base_url=ref.base_url, **kw)

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self.auth.aclose()

    def want(self, repository: str, actions: str) -> None:
        """Declare a scope (e.g. `pull,push`) so one bearer token covers the whole operation."""
        self.auth.add_scope(f"repository:{repository}:{actions}")

    # -- requests --------------------------------------------------------------------------

    async def _error(self, resp: httpx.Response, what: str) -> RegistryError:
        """Turn a refusal into a clear error. Bodies are read capped; no header is echoed."""
        text = b""
        async for chunk in resp.aiter_raw():
            text += chunk
            if len(text) > 65536:
                break
        codes, messages = [], []
        try:
            for err in json.loads(text).get("errors", []):
                codes.append(str(err.get("code", "")))
                messages.append(str(err.get("message", ""))[:200])
        except (ValueError, AttributeError):
            pass
        status = resp.status_code
        detail = f"HTTP {status}" + (f" {'/'.join(codes)}" if codes else "")
        if messages:
            detail += f": {'; '.join(messages)}"
        if status in (401, 403):
            return RegistryAuthError(
                f"registry {self.registry} refused {what} ({detail}) using {_who(self.credentials)}. Fix: give "
                "credentials with access to that repository (a DockerRegistryCredentials block; "
                "for Artifact Registry a GcpCredentials block, user oauth2accesstoken); not retried."
            )
        if status == 404:
            code = codes[0] if codes else "NOT_FOUND"
            return NotFound(
                f"registry {self.registry}: {what} not found ({detail})", self.registry, code
            )
        if status == 429 or status >= 500:
            return RegistryUnavailable(
                f"registry {self.registry} is unavailable for {what} ({detail})"
            )
        return RegistryRequestError(f"registry {self.registry} refused {what} ({detail})")

    async def _send(
        self,
        method: str,
        url: str,
        what: str,
        *,
        ok: Iterable[int] = (200,),
        stream: bool = False,
        attempts: int | None = None,
        **kw: Any,
    ) -> httpx.Response:
        """Send with retries on transient failures; raise a RegistryError on any other status."""
        ok = tuple(ok)
        attempts = attempts or self.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                request = self._http.build_request(method, url, **kw)
                resp = await self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                err: Exception = RegistryUnavailable(
                    f"registry {self.registry}: {what} failed: {type(exc).__name__}: {exc}"
                )
                transient = is_transient(exc)
            else:
                if resp.status_code in ok:
                    if not stream:
                        await resp.aread()
                    return resp
                err = await self._error(resp, what)
                await resp.aclose()
                transient = is_transient(err)
            if not transient or attempt == attempts:
                if transient and attempts > 1:
                    raise RegistryUnavailable(f"{err} - gave up after {attempt} attempts") from None
                raise err
            self.retries += 1
            delay = backoff_delay(attempt, self.backoff_base, self.backoff_cap)
            log.info("%s: transient failure (%s), retry %d in %.2fs", what, err, attempt, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    # -- manifests -------------------------------------------------------------------------

    async def get_manifest(self, repository: str, reference: str) -> Manifest:
        where = (
            f"{self.registry}/{repository}:{reference}"
            if not reference.startswith("sha256:")
            else f"{self.registry}/{repository}@{reference}"
        )
        resp = await self._send(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            f"manifest {where}",
            stream=True,
            headers={"Accept": ACCEPT},
        )
        try:
            length = int(resp.headers.get("content-length") or 0)
            if length > MAX_MANIFEST_BYTES:
                raise ManifestTooLarge(
                    f"{where}: manifest is {length} bytes, over the {MAX_MANIFEST_BYTES} byte (4 MiB) limit"
                )
            raw = bytearray()
            async for chunk in resp.aiter_raw():
                raw += chunk
                if len(raw) > MAX_MANIFEST_BYTES:
                    raise ManifestTooLarge(
                        f"{where}: manifest is over the {MAX_MANIFEST_BYTES} byte (4 MiB) limit"
                    )
        finally:
            await resp.aclose()
        manifest = parse_manifest(bytes(raw), resp.headers.get("content-type", ""), where=where)
        expected = (
            reference
            if reference.startswith("sha256:")
            else resp.headers.get("docker-content-digest")
        )
        if expected and expected != manifest.digest:
            raise DigestMismatch(
                f"{where}: manifest bytes hash to {manifest.digest}, not {expected}"
            )
        return manifest

    async def manifest_digest(self, repository: str, reference: str) -> str | None:
        """HEAD a manifest: its digest, or None when absent."""
        try:
            resp = await self._send(
                "HEAD",
                f"/v2/{repository}/manifests/{reference}",
                f"manifest {self.registry}/{repository}:{reference}",
                headers={"Accept": ACCEPT},
            )
        except NotFound:
            return None
        return resp.headers.get("docker-content-digest") or (
            reference if reference.startswith("sha256:") else None
        )

    async def put_manifest(self, repository: str, reference: str, manifest: Manifest) -> None:
        """Push the original bytes under a digest or a tag."""
        await self._send(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            f"manifest push {self.registry}/{repository}:{reference}",
            ok=(200, 201),
            content=manifest.raw,
            headers={"Content-Type": manifest.media_type},
        )

    async def list_tags(self, repository: str) -> list[str]:
        try:
            resp = await self._send(
                "GET", f"/v2/{repository}/tags/list", f"tags of {self.registry}/{repository}"
            )
        except NotFound:
            return []
        return resp.json().get("tags") or []

    # -- blobs -----------------------------------------------------------------------------

    async def blob_exists(self, repository: str, digest: str) -> bool:
        try:
            await self._send(
                "HEAD",
                f"/v2/{repository}/blobs/{digest}",
                f"blob {self.registry}/{repository}@{digest}",
            )
        except NotFound:
            return False
        return True

    async def read_blob(
        self, repository: str, desc: Descriptor, limit: int = MAX_CONFIG_BYTES
    ) -> bytes:
        """A small blob (an image config) in memory, digest-verified."""
        where = f"blob {self.registry}/{repository}@{desc.digest}"
        if desc.size > limit:
            raise RegistryRequestError(
                f"{where} is {desc.size} bytes, over the {limit} byte limit for configs"
            )
        resp = await self._send("GET", f"/v2/{repository}/blobs/{desc.digest}", where)
        if sha256_digest(resp.content) != desc.digest:
            raise DigestMismatch(f"{where}: content hashes to {sha256_digest(resp.content)}")
        return resp.content

    async def open_blob(self, repository: str, desc: Descriptor) -> httpx.Response:
        """A streaming GET (redirects to a CDN are followed; credentials are not sent there)."""
        return await self._send(
            "GET",
            f"/v2/{repository}/blobs/{desc.digest}",
            f"blob {self.registry}/{repository}@{desc.digest}",
            stream=True,
        )

    async def start_upload(
        self, repository: str, mount: tuple[str, str] | None = None
    ) -> str | None:
        """POST an upload; with mount=(from_repo, digest) try a cross-repository mount first.

        Returns the upload location, or None when the mount succeeded (201).
        """
        params = {"mount": mount[1], "from": mount[0]} if mount else None
        resp = await self._send(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            f"blob upload to {self.registry}/{repository}",
            ok=(201, 202),
            params=params,
        )
        if resp.status_code == 201 and mount:
            return None
        location = resp.headers.get("location")
        if not location:
            raise RegistryRequestError(
                f"registry {self.registry} started an upload without a Location"
            )
        return location

    async def finish_upload(
        self, location: str, desc: Descriptor, chunks: AsyncIterator[bytes], repository: str
    ) -> None:
        """PUT the whole blob as a stream (single attempt: a streamed body cannot be replayed)."""
        url = httpx.URL(location)
        url = url.copy_merge_params({"digest": desc.digest})
        what = f"blob upload {self.registry}/{repository}@{desc.digest}"
        try:
            await self._send(
                "PUT",
                str(url),
                what,
                ok=(201, 204),
                attempts=1,
                content=chunks,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(desc.size),
                },
            )
        except RegistryAuthError:
            if not self.auth.expire_token():
                raise
            # Bearer tokens last minutes (Docker Hub: 5): a long upload can outlive one.
            raise RegistryUnavailable(
                f"{what}: the bearer token expired during the upload; retrying with a fresh one"
            ) from None

    async def cancel_upload(self, location: str) -> None:
        try:
            await self._http.delete(location)
        except httpx.HTTPError:
            pass

    async def upload_bytes(self, repository: str, data: bytes, media_type: str = "") -> Descriptor:
        """Push a small in-memory blob (configs, test fixtures); skipped if present."""
        desc = Descriptor(media_type, sha256_digest(data), len(data))
        if not await self.blob_exists(repository, desc.digest):
            location = await self.start_upload(repository)
            assert location is not None

            async def one() -> AsyncIterator[bytes]:
                yield data

            await self.finish_upload(location, desc, one(), repository)
        return desc


# ---------------------------------------------------------------- copy


async def _pump(resp: httpx.Response, desc: Descriptor, queue: asyncio.Queue) -> None:
    """Read and hash the source body into a small queue, so reading overlaps the upload (on a
    real network both sides wait on latency). Ends with the digest it computed, or with the
    exception that stopped it."""
    hasher, seen = hashlib.sha256(), 0
    try:
        async for chunk in resp.aiter_raw():  # pieces of up to PIPE_CHUNK (see _WideReadStream)
            if not chunk:
                continue
            seen += len(chunk)
            if seen > desc.size:
                raise DigestMismatch(f"more than the {desc.size} bytes the manifest declares")
            hasher.update(chunk)
            await queue.put(chunk)
    except Exception as exc:  # handed to the upload side, which raises it
        await queue.put(exc)
        return
    await queue.put(("sha256:" + hasher.hexdigest(), seen))


async def _verified(
    queue: asyncio.Queue, desc: Descriptor, where: str, on_bytes: Callable[[int], None]
) -> AsyncIterator[bytes]:
    """The upload body: the source's bytes, with the last chunk held back until the digest is
    proven, so a corrupt blob never completes an upload."""
    held = None
    while isinstance(item := await queue.get(), bytes):
        if held is not None:
            yield held
            on_bytes(len(held))
        held = item
    if isinstance(item, DigestMismatch):
        raise DigestMismatch(f"{where}: {item}; not copied") from None
    if isinstance(item, Exception):
        raise item
    actual, seen = item
    if seen != desc.size or actual != desc.digest:
        raise DigestMismatch(
            f"{where}: received {seen} bytes hashing to {actual}, expected {desc.size} bytes with "
            f"{desc.digest}; the source blob is corrupt, nothing was tagged"
        )
    if held is not None:
        yield held
        on_bytes(len(held))


@dataclass
class ImagePlan:
    """What to copy: the top manifest (image or index) and the image manifests under it."""

    source: ImageRef
    top: Manifest
    images: list[Manifest]
    platforms: list[str]
    upstream_digest: (
        str  # digest the source tag resolves to (differs from top when one platform is picked)
    )

    def blobs(self) -> list[Descriptor]:
        seen: dict[str, Descriptor] = {}
        for image in self.images:
            for desc in image.blobs():
                seen.setdefault(desc.digest, desc)
        return list(seen.values())

    @property
    def size(self) -> int:
        return (
            sum(d.size for d in self.blobs())
            + len(self.top.raw)
            + sum(len(m.raw) for m in self.images if m is not self.top)
        )


async def plan_image(
    client: RegistryClient, ref: ImageRef, platforms: list[str] | None = None
) -> ImagePlan:
    """Resolve a reference to its manifest(s), picking platforms from an index.

    All platforms: the index is kept as is. One platform: that image manifest alone becomes the
    copy (its own digest). Several: a new index holding only those (a new digest).
    """
    top = await client.get_manifest(ref.repository, ref.reference)
    upstream = top.digest
    if not top.is_index:
        return ImagePlan(ref, top, [top], [], upstream)
    children = top.children()
    if platforms:
        chosen = [c for c in children if any(platform_matches(p, c.platform) for p in platforms)]
        if not chosen:
            have = ", ".join(sorted({c.platform or "?" for c in children}))
            raise PlatformNotFound(
                f"{ref}: no manifest for platform(s) {', '.join(platforms)}; the index has {have}"
            )
    else:
        chosen = children
    images = list(
        await asyncio.gather(*(client.get_manifest(ref.repository, c.digest) for c in chosen))
    )
    for child, image in zip(chosen, images, strict=True):
        if image.is_index:
            raise UnsupportedMediaType(f"{ref}: nested index {child.digest} is not supported")
    names = [c.platform or "?" for c in chosen]
    if platforms and len(chosen) == 1:
        return ImagePlan(ref, images[0], images, names, upstream)
    if platforms and len(chosen) < len(children):
        data = top.data
        keep = {c.digest for c in chosen}
        data["manifests"] = [m for m in data["manifests"] if m["digest"] in keep]
        raw = json.dumps(data, indent=3).encode()
        top = Manifest(top.media_type, raw, sha256_digest(raw))
    return ImagePlan(ref, top, images, names, upstream)


async def copy_blob(
    src: RegistryClient,
    src_repo: str,
    dst: RegistryClient,
    dst_repo: str,
    desc: Descriptor,
    stats: CopyStats,
    progress: ProgressFn | None = None,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> str:
    """Copy one blob: 'skipped' (present), 'mounted' (same registry) or 'copied' (streamed)."""
    logger = logger or log
    where = f"blob {src.registry}/{src_repo}@{desc.digest}"
    if await dst.blob_exists(dst_repo, desc.digest):
        stats.blobs_skipped += 1
        _tick(progress, desc.size)
        return "skipped"
    same = src.registry == dst.registry
    for attempt in range(1, dst.max_attempts + 1):
        moved = 0

        def on_bytes(n: int) -> None:
            nonlocal moved
            moved += n
            stats.bytes_copied += n
            _tick(progress, n)

        location = None
        try:
            location = await dst.start_upload(
                dst_repo, (src_repo, desc.digest) if same and src_repo != dst_repo else None
            )
            if location is None:
                stats.blobs_mounted += 1
                _tick(progress, desc.size)
                logger.info("mounted %s from %s into %s", desc.digest[:19], src_repo, dst_repo)
                return "mounted"
            started = time.monotonic()
            resp = await src.open_blob(src_repo, desc)
            queue: asyncio.Queue = asyncio.Queue(maxsize=PIPE_DEPTH)
            reader = asyncio.create_task(_pump(resp, desc, queue))
            try:
                body = _verified(queue, desc, where, on_bytes)
                await dst.finish_upload(location, desc, body, dst_repo)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                await resp.aclose()
        except Exception as exc:
            stats.bytes_copied -= moved
            _tick(progress, -moved)
            if not is_transient(exc) or attempt == dst.max_attempts:
                if location:  # giving up: drop the partial upload (a retry opens a new one)
                    await dst.cancel_upload(location)
                raise
            stats.retries += 1
            delay = backoff_delay(attempt, dst.backoff_base, dst.backoff_cap)
            logger.warning(
                "%s: %s; retrying this blob (%d) in %.2fs", where, _brief(exc), attempt, delay
            )
            await asyncio.sleep(delay)
            continue
        seconds = time.monotonic() - started
        stats.blobs_copied += 1
        logger.info("copied %s (%.1f MB in %.2fs)", desc.digest[:19], desc.size / 1e6, seconds)
        return "copied"
    raise AssertionError("unreachable")


def _tick(progress: ProgressFn | None, n: int) -> None:
    if progress is not None and n:
        progress(n)


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


async def copy_image(
    src: RegistryClient,
    plan: ImagePlan,
    dst: RegistryClient,
    dst_repo: str,
    *,
    concurrency: int = 4,
    progress: ProgressFn | None = None,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> CopyStats:
    """Copy every blob then every manifest (by digest, children first). Tags nothing.

    On any failure the remaining blob copies are cancelled and no manifest is pushed.
    """
    started = time.monotonic()
    stats = CopyStats()
    blobs = plan.blobs()
    stats.bytes_total = sum(b.size for b in blobs)
    src_repo = plan.source.repository
    src.want(src_repo, "pull")
    dst.want(dst_repo, "pull,push")
    if src.registry == dst.registry and src_repo != dst_repo:
        dst.want(src_repo, "pull")
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(desc: Descriptor) -> None:
        async with gate:
            await copy_blob(src, src_repo, dst, dst_repo, desc, stats, progress, logger)

    try:
        async with asyncio.TaskGroup() as group:
            for desc in blobs:
                group.create_task(one(desc))
    except (
        BaseExceptionGroup
    ) as failed:  # the first blob error, as itself (the rest were cancelled)
        raise failed.exceptions[0] from None
    manifests = [m for m in plan.images if m is not plan.top] + [plan.top]
    for manifest in manifests:
        if await dst.manifest_digest(dst_repo, manifest.digest) != manifest.digest:
            await dst.put_manifest(dst_repo, manifest.digest, manifest)
            stats.manifests_pushed += 1
    stats.retries += src.retries + dst.retries
    stats.seconds = time.monotonic() - started
    return stats


async def tag_image(
    dst: RegistryClient, repository: str, manifest: Manifest, tags: Iterable[str]
) -> list[str]:
    """Point tags at a manifest already pushed by digest; returns the tags that moved."""
    moved = []
    for tag in tags:
        if await dst.manifest_digest(repository, tag) != manifest.digest:
            await dst.put_manifest(repository, tag, manifest)
            moved.append(tag)
    return moved


def config_env(config: dict[str, Any]) -> dict[str, str]:
    env = (config.get("config") or {}).get("Env") or []
    return dict(item.split("=", 1) for item in env if "=" in item)


def config_labels(config: dict[str, Any]) -> dict[str, str]:
    return (config.get("config") or {}).get("Labels") or {}
