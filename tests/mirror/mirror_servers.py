"""Peers for the registry tests: a fault-injecting HTTP proxy and a JWT token server.

Both are small ASGI apps run by uvicorn in a thread of the test process; the registries behind
them are real (sandbox/registry.py).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from sandbox.procs import free_port


class ThreadedServer:
    """Run an ASGI app on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="error", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


async def _lifespan(receive, send, on_start=None, on_stop=None) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if on_start:
                await on_start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if on_stop:
                await on_stop()
            await send({"type": "lifespan.shutdown.complete"})
            return


UNAVAILABLE = json.dumps(
    {"errors": [{"code": "UNAVAILABLE", "message": "injected fault"}]}
).encode()
# Docker Hub's rate-limit answer: 429 with code TOOMANYREQUESTS (distribution-spec error codes)
# and this text, as quoted in public build logs (e.g. dandi/dandi-archive#3); limits described at
# docs.docker.com/docker-hub/usage/.
TOOMANYREQUESTS = json.dumps(
    {
        "errors": [
            {
                "code": "TOOMANYREQUESTS",
                "message": "You have reached your pull rate limit. You may increase the limit by "
                "authenticating and upgrading: https://www.docker.com/increase-rate-limit",
            }
        ]
    }
).encode()
DENIED = json.dumps(
    {"errors": [{"code": "DENIED", "message": "requested access to the resource is denied"}]}
).encode()


@dataclass
class FlakyProxy:
    """Forwards to a real registry, answering 503 to every `fail_every`-th request (0: never).

    With `pad_manifests=N`, manifest GETs get N spaces appended (valid JSON, too big), sent
    chunked (`pad_chunked`) or with a Content-Length: the oversized-manifest fault.

    With `expire_first_upload=True`, the first blob upload PUT reaches the registry without its
    Authorization header, so the registry itself answers 401 with its Bearer challenge in the
    middle of an upload: what a token that expired during a long upload gets.

    Rate limiting (`throttle_every=N`, at most `throttle_max` times): the N-th request gets
    `throttle_status` (429 as Docker Hub, GHCR and Artifact Registry answer a rate limit; 503 as
    a registry shedding load) with a `Retry-After` header (RFC 9110 10.2.3), delta-seconds
    (`retry_after="1"`) or an HTTP-date (`retry_after="date:2"`). A request for the same path
    before that time is refused again and recorded in `early`: a client that does not honour
    Retry-After shows there. `throttle_only="GET /v2/x/blobs/"`: only requests whose
    "METHOD path" starts with it are throttled. `seen` is the registry side's request log:
    (monotonic time of arrival, "METHOD path", status answered when throttled else 0).

    `cut_bodies=True`: the first GET of each manifest and blob sends its headers and half of its
    body, then drops the connection (a reset mid-response; recorded in `cut`).

    `fail_upload_puts=N`: the first N blob upload PUTs get 503 (never forwarded), so the client
    retries that blob in a new upload session; `wrong_digest_for=D`: the upload PUT of blob D
    reaches the registry with another digest, which refuses it with its own 400 DIGEST_INVALID;
    `hold_uploads=S`: every other upload PUT is held S seconds first (dropped if the client
    hangs up meanwhile, as a cancelled upload never reaches the registry).

    `deny_mounts=True`: a cross-repository mount POST gets 403 DENIED, what a registry answers
    when the pushing credentials may not read the `from` repository.

    `rewrite_status={"CODE": 500}`: a registry error carrying CODE is answered with that status
    (distribution answers MANIFEST_BLOB_UNKNOWN with a 500 when its storage driver wraps the
    error: distribution/distribution#2152, #3122).
    """

    backend: str
    fail_every: int = 3
    pad_manifests: int = 0
    pad_chunked: bool = True
    expire_first_upload: bool = False
    throttle_every: int = 0
    throttle_max: int = 3
    throttle_status: int = 429
    retry_after: str = "1"
    throttle_only: str = ""
    seen: list[tuple[float, str, int]] = field(default_factory=list)
    throttled: int = 0
    early: list[str] = field(default_factory=list)
    not_before: dict[str, float] = field(default_factory=dict)
    cut_bodies: bool = False
    cut: list[str] = field(default_factory=list)
    fail_upload_puts: int = 0
    wrong_digest_for: str = ""
    hold_uploads: float = 0.0
    deny_mounts: bool = False
    mounts_denied: int = 0
    rewrite_status: dict[str, int] = field(default_factory=dict)
    puts: list[str] = field(default_factory=list)  # blob upload PUTs seen: path?query
    expired: int = 0
    requests: int = 0
    failed: int = 0
    log: list[str] = field(default_factory=list)
    client: httpx.AsyncClient | None = None

    async def _start(self) -> None:
        self.client = httpx.AsyncClient(timeout=60)

    async def _stop(self) -> None:
        await self.client.aclose()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send, self._start, self._stop)
        # A DELETE (cleanup of an abandoned upload) is not counted for `fail_every`: else a
        # blob's retry (DELETE, POST, PUT) would meet the failing third request every time.
        if scope["method"] != "DELETE":
            self.requests += 1
        self.log.append(f"{scope['method']} {scope['path']}")
        key = f"{scope['method']} {scope['path']}"
        query_string = scope["query_string"].decode()
        upload_put = scope["method"] == "PUT" and "/blobs/uploads/" in scope["path"]
        if upload_put:
            self.puts.append(f"{scope['path']}?{query_string}")
        arrived = time.monotonic()
        if self.throttle_every and await self._throttle(key, send):
            self.seen.append((arrived, key, self.throttle_status))
            return
        self.seen.append((arrived, key, 0))
        if upload_put and self.fail_upload_puts > 0:
            self.fail_upload_puts -= 1
            self.failed += 1
            return await _reply(send, 503, UNAVAILABLE)
        if self.deny_mounts and scope["method"] == "POST" and "mount=" in query_string:
            self.mounts_denied += 1
            return await _reply(send, 403, DENIED)
        if self.fail_every and scope["method"] != "DELETE" and self.requests % self.fail_every == 0:
            self.failed += 1
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": UNAVAILABLE})
            return
        dropped = [b"connection", b"transfer-encoding"]
        if self.expire_first_upload and upload_put and not self.expired:
            self.expired += 1
            dropped.append(b"authorization")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in dropped]
        has_body = any(k.lower() == b"content-length" and v != b"0" for k, v in headers) or scope[
            "method"
        ] in ("PUT", "PATCH")

        async def body():
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body"):
                    return

        content: object = body() if has_body else None
        refused = self.wrong_digest_for[7:]  # its hex, however the ':' is encoded
        if upload_put and refused and refused in query_string:
            query_string = query_string.replace(refused, "0" * 64)
        elif upload_put and self.hold_uploads:
            data = b"".join([chunk async for chunk in body()])
            try:  # a client that hangs up while held never reaches the registry
                message = await asyncio.wait_for(receive(), timeout=self.hold_uploads)
                if message["type"] == "http.disconnect":
                    return
            except TimeoutError:
                pass
            content = data
        url = (
            self.backend + scope["raw_path"].decode() + ("?" + query_string if query_string else "")
        )
        request = self.client.build_request(scope["method"], url, headers=headers, content=content)
        response = await self.client.send(request, stream=True)
        try:
            if self.rewrite_status and response.status_code >= 400:
                raw = await response.aread()
                status = next(
                    (v for code, v in self.rewrite_status.items() if code.encode() in raw),
                    response.status_code,
                )
                kept = [
                    (k, v)
                    for k, v in response.headers.raw
                    if k.lower() not in (b"connection", b"transfer-encoding", b"content-type")
                ]
                return await _reply(send, status, raw, kept)
            readable = scope["method"] == "GET" and (
                "/manifests/" in scope["path"] or "/blobs/sha256:" in scope["path"]
            )
            if self.cut_bodies and readable and response.status_code == 200 and key not in self.cut:
                self.cut.append(key)
                raw = await response.aread()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (k, v)
                            for k, v in response.headers.raw
                            if k.lower() not in (b"connection", b"transfer-encoding")
                        ],
                    }
                )
                await send(
                    {"type": "http.response.body", "body": raw[: len(raw) // 2], "more_body": True}
                )
                raise ConnectionResetError("cut_bodies: connection dropped mid-body")
            out = [
                (k, v)
                for k, v in response.headers.raw
                if k.lower() not in (b"connection", b"transfer-encoding")
            ]
            is_manifest = "/manifests/" in scope["path"] and scope["method"] == "GET"
            pad = self.pad_manifests if is_manifest and response.status_code == 200 else 0
            if pad:
                drop = (b"content-length", b"docker-content-digest")
                out = [(k, v) for k, v in out if k.lower() not in drop]
                if not self.pad_chunked:
                    length = int(response.headers["content-length"]) + pad
                    out.append((b"content-length", str(length).encode()))
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": out}
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            while pad > 0:
                piece = min(pad, 65536)
                pad -= piece
                await send({"type": "http.response.body", "body": b" " * piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    async def _throttle(self, key: str, send) -> bool:
        """Answer a rate limit (see the class doc); True when this request was refused."""
        now = time.time()
        until = self.not_before.get(key)
        if until is not None and now < until - 0.05:
            self.early.append(key)
        elif (
            self.throttled >= self.throttle_max
            or self.requests % self.throttle_every
            or not key.startswith(self.throttle_only)
        ):
            return False
        else:
            self.throttled += 1
            if self.retry_after.startswith("date:"):
                until = float(math.ceil(now) + int(self.retry_after[5:]))
                header = format_datetime(dt.datetime.fromtimestamp(until, dt.UTC), usegmt=True)
            else:
                until = now + float(self.retry_after)
                header = self.retry_after
            self.not_before[key] = until
            body = TOOMANYREQUESTS if self.throttle_status == 429 else UNAVAILABLE
            await _reply(send, self.throttle_status, body, [(b"retry-after", header.encode())])
            return True
        wait = max(1, math.ceil(until - now))
        await _reply(send, self.throttle_status, TOOMANYREQUESTS, [(b"retry-after", b"%d" % wait)])
        return True


async def _reply(send, status: int, body: bytes, headers: list | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """The token service of a registry configured with `auth: token:` (distribution's JWT flow).

    Users with the right password get every action they ask for (within `grants`, when their
    name is there: repository prefixes they may touch); anonymous callers get a token with no
    access (the registry then refuses them); a wrong password gets 401. Each `scope` query
    parameter is one scope (docker token spec), as recorded in `issued`.

    `strict`: a token service that refuses the whole request (401) when one requested scope is
    denied, instead of granting the subset the spec asks for; what cesanta/docker_auth and
    Harbor's token service did with a mount's two scopes (cesanta/docker_auth#67,
    goharbor/harbor#2411, moby/moby#20387). Refusals are counted in `refused`.
    """

    root: Path
    users: dict[str, str]
    grants: dict[str, tuple[str, ...]] = field(default_factory=dict)
    service: str = "shipyard-test-registry"
    issuer: str = "shipyard-test-token-issuer"
    issued: list[dict] = field(default_factory=list)
    refused: int = 0
    strict: bool = False
    denied: list[dict] = field(default_factory=list)  # strict refusals: user and scopes

    def __post_init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shipyard test token signer")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.root.mkdir(parents=True, exist_ok=True)
        self.bundle = self.root / "token-cert.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def registry_auth(self, realm: str) -> dict:
        """The `auth:` section for start_registry(extra_auth=...)."""
        return {
            "token": {
                "realm": realm,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": str(self.bundle),
            }
        }

    def sign(self, claims: dict) -> str:
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send)
        query = parse_qs(scope["query_string"].decode())
        headers = dict(scope["headers"])
        user = None
        if b"authorization" in headers:
            kind, _, value = headers[b"authorization"].decode().partition(" ")
            name, _, password = (
                base64.b64decode(value).decode().partition(":") if kind == "Basic" else ("", "", "")
            )
            if self.users.get(name) != password or not name:
                self.refused += 1
                return await self._reply(send, 401, {"details": "incorrect username or password"})
            user = name
        access = []
        for item in query.get("scope", []):
            kind, _, rest = item.partition(":")
            repo, _, actions = rest.rpartition(":")
            allowed = user is not None and (
                user not in self.grants or repo.startswith(self.grants[user])
            )
            access.append(
                {"type": kind, "name": repo, "actions": actions.split(",") if allowed else []}
            )
        if self.strict and any(not a["actions"] for a in access):
            self.refused += 1
            self.denied.append({"user": user, "scopes": query.get("scope", [])})
            return await self._reply(
                send, 401, {"details": "requested access to the resource is denied"}
            )
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        self.issued.append({"user": user, "scopes": query.get("scope", [])})
        token = self.sign(claims)
        await self._reply(send, 200, {"token": token, "access_token": token, "expires_in": 300})

    async def _reply(self, send, status: int, body: dict) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})
