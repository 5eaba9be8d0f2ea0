"""Cloud Run invoker IAM in the emulator: a private service (invokerIamDisabled unset) answers a
request without a valid ID token with Google's 403 page, before any instance sees it.

The emulator mints its own ID tokens (`GET /_sandbox/id-token?audience=URL`, what the
`GoogleCloud` block asks for in the sandbox) and accepts only those: HMAC-signed with a
per-process key, audience = exactly a URL of the service (its own or a tag's) or one of its
custom audiences, not expired.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time

from fastapi import FastAPI

_KEY = secrets.token_bytes(32)
TOKEN_TTL_S = 3600

# Google Front End's page for a request the invoker check refuses, as real deploys print it
# (quoted in public repositories' docs: "<h1>Error: Forbidden</h1><h2>Your client does not
# have permission to get URL <code>/</code> from this server.</h2>").
FORBIDDEN_PAGE = (
    '<html><head>\n<meta http-equiv="content-type" content="text/html;charset=utf-8">\n'
    "<title>403 Forbidden</title>\n</head>\n<body text=#000000 bgcolor=#ffffff>\n"
    "<h1>Error: Forbidden</h1>\n<h2>Your client does not have permission to get URL "
    "<code>{path}</code> from this server.</h2>\n<h2></h2>\n</body></html>\n"
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(audience: str) -> str:
    """An ID token for `audience` (a JWT-shaped string; only this emulator accepts it)."""
    claims = {
        "iss": "https://accounts.google.com",
        "aud": audience,
        "exp": int(time.time()) + TOKEN_TTL_S,
        "email": "sandbox@shipyard.local",
    }
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims, sort_keys=True).encode())
    sig = hmac.new(_KEY, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def audience_of(token: str) -> str | None:
    """The audience of a token this emulator minted and that has not expired, else None."""
    try:
        head, body, sig = token.split(".")
        want = hmac.new(_KEY, f"{head}.{body}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(_b64(want), sig):
            return None
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, TypeError):
        return None
    if claims.get("exp", 0) < time.time():
        return None
    aud = claims.get("aud")
    return aud if isinstance(aud, str) else None


def invoker_allowed(service_spec: dict, audiences: set[str], authorization: str) -> bool:
    """Whether a request reaches the service: public (invokerIamDisabled), or a bearer ID
    token minted here whose audience is one of the service's URLs (`audiences`: its own and its
    tags', as the caller knows them) or one of its `customAudiences`, matched exactly.

    "Clients that call an Identity and Access Management-protected Cloud Run service must
    provide a valid ID token that includes an audience (aud) claim matching the receiving
    service's *.run.app URL. For clients that don't know this URL, you can use a custom audience
    value." (cloud.google.com/run/docs/configuring/custom-audiences). Matching, not containing:
    the audience "limits the risk of a replay attack, where an intercepted token intended for
    use with one service is replayed against a different service" (same page), so a token for
    `my-pages-…` does not open `pages-…`. Google's own sample gives the URL with a trailing
    slash ("Example `audience` value (Cloud Run): https://my-cloud-run-service.run.app/",
    cloudrun-service-to-service-auth): one trailing slash is the same URL."""
    if service_spec.get("invokerIamDisabled"):
        return True
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    audience = audience_of(token.strip())
    if audience is None:
        return False
    accepted = {a.rstrip("/") for a in audiences}
    accepted.update(str(a) for a in service_spec.get("customAudiences") or [])
    return audience in accepted or (audience.endswith("/") and audience[:-1] in accepted)


def register(app: FastAPI) -> None:
    @app.get("/_sandbox/id-token")
    async def id_token(audience: str) -> dict:
        return {"token": mint(audience)}
