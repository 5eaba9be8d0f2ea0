"""Peers for the registry tests: a fault-injecting HTTP proxy and a JWT token server.

Both are small ASGI apps run by uvicorn in a thread of the test process; the registries behind
them are real (sandbox/registry.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
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


@dataclass
class FlakyProxy:
    """Forwards to a real registry, answering 503 to every `fail_every`-th request (0: never).

    With `pad_manifests=N`, manifest GETs get N spaces appended (valid JSON, too big), sent
    chunked (`pad_chunked`) or with a Content-Length: the oversized-manifest fault.

    With `expire_first_upload=True`, the first blob upload PUT reaches the registry without its
    Authorization header, so the registry itself answers 401 with its Bearer challenge in the
    middle of an upload: what a token that expired during a long upload gets.
    """

    backend: str
    fail_every: int = 3
    pad_manifests: int = 0
    pad_chunked: bool = True
    expire_first_upload: bool = False
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
        self.requests += 1
        self.log.append(f"{scope['method']} {scope['path']}")
        if self.fail_every and self.requests % self.fail_every == 0:
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
        upload_put = scope["method"] == "PUT" and "/blobs/uploads/" in scope["path"]
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

        url = (
            self.backend
            + scope["raw_path"].decode()
            + ("?" + scope["query_string"].decode() if scope["query_string"] else "")
        )
        request = self.client.build_request(
            scope["method"], url, headers=headers, content=body() if has_body else None
        )
        response = await self.client.send(request, stream=True)
        try:
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


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """The token service of a registry configured with `auth: token:` (distribution's JWT flow).

    Users with the right password get every action they ask for; anonymous callers get a token
    with no access (the registry then refuses them); a wrong password gets 401.
    """

    root: Path
    users: dict[str, str]
    service: str = "shipyard-test-registry"
    issuer: str = "shipyard-test-token-issuer"
    issued: list[dict] = field(default_factory=list)
    refused: int = 0

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
            access.append(
                {"type": kind, "name": repo, "actions": actions.split(",") if user else []}
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
