"""Credentials (the password a pydantic SecretStr) and the registry auth flow (Basic, Bearer)."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import httpx
from pydantic import SecretStr

from shipyard.tasks.registry.errors import (
    RegistryAuthError,
    RegistryRequestError,
    RegistryUnavailable,
)
from shipyard.tasks.registry.transport import USER_AGENT, tls_verify
from shipyard.tasks.waiting import await_for

TOKEN_ATTEMPTS = 4  # a token service that is down or busy: asked four times, with backoff


class _TokenServiceBusy(Exception):
    """Internal: the token service answered 429 or 5xx (asked again; the last answer stands)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def _worth_asking_again(exc: Exception) -> bool:
    return isinstance(exc, httpx.TransportError | _TokenServiceBusy)


@dataclass(frozen=True)
class RegistryCredentials:
    """Username and password for one registry; `source` names where they came from (for messages)."""

    username: str
    password: SecretStr = field(repr=False)
    source: str = "explicit credentials"

    def __post_init__(self) -> None:
        # Accept a plain string or any SecretStr-like value (prefect-docker's block field).
        value: object = self.password
        if not isinstance(value, SecretStr):
            getter = getattr(value, "get_secret_value", None)
            object.__setattr__(self, "password", SecretStr(str(getter() if getter else value)))


def who(credentials: RegistryCredentials | None) -> str:
    """Where the credentials came from, for error messages (never the secret itself)."""
    return credentials.source if credentials else "no credentials (anonymous)"


_PARAM_RE = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="...",scope="..."` -> ("bearer", {realm, service, scope})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _PARAM_RE.finditer(rest)
    }
    return scheme.lower(), params


def _scope_repository(scope: str) -> str:
    """`repository:base/cuda:pull,push` -> `repository:base/cuda` (type and name)."""
    return scope.rpartition(":")[0] if scope.count(":") >= 2 else scope


class RegistryAuth(httpx.Auth):
    """Answers 401 challenges: Basic with the credentials, or Bearer via the token realm.

    The token is requested for every scope this client will need (so one token serves the whole
    copy) and then sent up front on each request. A streamed request body cannot be replayed, so a
    401 on one is returned to the caller (the blob copy retries that blob; the next request fetches
    a fresh token).

    Optional scopes (`add_scope(..., optional=True)`: a mount source's `pull`, only ever asked of
    the registry that holds the source) ride along for cross-repository mounts. The token spec
    says a token service grants what it can ("If the client only has a subset of the requested
    access it must not be considered an error", distribution's docs/spec/auth/token.md), but
    some refuse the whole request when one scope is denied (token services that handled one
    scope only or failed the mount's two: cesanta/docker_auth#67, goharbor/harbor#2411, the
    GitLab case in estesp/manifest-tool#53; docker itself falls back to a plain upload on that
    auth failure, moby/moby#20387). When such a combined request is refused, the token is asked
    again for this client's own scopes alone (`narrowed`), and the copy uploads instead of
    mounting.
    """

    def __init__(self, registry: str, credentials: RegistryCredentials | None) -> None:
        self.registry = registry
        self.credentials = credentials
        self.scopes: list[str] = []
        self.optional_scopes: list[str] = []  # dropped when a token service refuses them
        self.narrowed = False  # a combined request was refused: own scopes only from now on
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

    def add_scope(self, scope: str, optional: bool = False) -> None:
        """Ask tokens for `scope`; an optional one is dropped if the token service refuses it."""
        wanted = self.optional_scopes if optional else self.scopes
        if scope not in self.scopes and scope not in wanted:
            wanted.append(scope)

    def _own_scopes(self, challenge_scopes: list[str]) -> list[str]:
        """This client's required scopes, and the challenge's scopes on their repositories."""
        own = list(self.scopes)
        repos = {_scope_repository(s) for s in self.scopes}
        for scope in challenge_scopes:
            if scope not in own and (not self.scopes or _scope_repository(scope) in repos):
                own.append(scope)
        return own

    def _basic_header(self, credentials: RegistryCredentials) -> str:
        pair = f"{credentials.username}:{credentials.password.get_secret_value()}"
        return "Basic " + base64.b64encode(pair.encode()).decode()

    def _apply(self, request: httpx.Request) -> str | None:
        if self._token:
            request.headers["Authorization"] = f"Bearer {self._token}"
        elif self._basic and self.credentials:
            request.headers["Authorization"] = self._basic_header(self.credentials)
        return self._token

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
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
        # A challenge may name several scopes, space-separated in one `scope` parameter
        # (distribution's token auth joins every access a request needs, e.g. a mount's
        # `repository:dst:pull,push repository:src:pull`); the token service wants each as its
        # own `scope` query parameter (docker token spec, "Requesting a Token").
        asked = challenge.get("scope", "").split()
        own = self._own_scopes(asked)
        scopes = list(own)
        if not self.narrowed:
            for scope in [*self.optional_scopes, *asked]:
                if scope not in scopes:
                    scopes.append(scope)
        resp = await self._ask_token(challenge, scopes)
        if resp.status_code in (401, 403) and scopes != own:
            # A token service that refuses the whole request for one scope it denies: ask for
            # this client's own scopes alone (a mount from elsewhere is then not tried).
            self.narrowed = True
            scopes = own
            resp = await self._ask_token(challenge, scopes)
        if resp.status_code in (401, 403):
            raise RegistryAuthError(
                f"the token service {httpx.URL(challenge['realm']).host} of registry "
                f"{self.registry} refused a token for {' '.join(scopes) or 'the registry'} "
                f"(HTTP {resp.status_code}) with {who(self.credentials)}. Fix: check the "
                "username/password (or token) there."
            )
        if resp.status_code != 200:
            raise RegistryRequestError(
                f"the token service {httpx.URL(challenge['realm']).host} of registry "
                f"{self.registry} answered HTTP {resp.status_code}"
            )
        body = resp.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryRequestError(f"the token service of {self.registry} returned no token")
        return str(token)

    async def _ask_token(self, challenge: dict[str, str], scopes: list[str]) -> httpx.Response:
        """One token request (asked again while the service is busy or unreachable); its
        answer, whatever the status."""
        query: list[tuple[str, str | int | float | bool | None]] = [("scope", s) for s in scopes]
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
                timeout=30, verify=tls_verify(realm), headers={"User-Agent": USER_AGENT}
            )
        http = self._http

        async def ask() -> httpx.Response:
            resp = await http.get(realm, params=query, auth=auth)
            if resp.status_code == 429 or resp.status_code >= 500:
                raise _TokenServiceBusy(resp)
            return resp

        try:
            resp = await await_for(
                ask,
                what=f"token service {httpx.URL(realm).host}",
                first_delay_s=0.2,
                max_delay_s=2.0,
                attempts=TOKEN_ATTEMPTS,
                retry_on=_worth_asking_again,
            )
        except httpx.TransportError as exc:
            raise RegistryUnavailable(
                f"token service {httpx.URL(realm).host} for registry {self.registry} is "
                f"unreachable: {type(exc).__name__}"
            ) from None
        except _TokenServiceBusy as busy:
            resp = busy.response  # still busy after every attempt: its answer is reported
        return resp

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
