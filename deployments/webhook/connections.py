"""Connections the receiver holds, bounded so that slow senders cannot silence it (slow-loris).

A GitHub or GitLab delivery sends its request line and headers at once; a connection still
without complete headers after a few milliseconds is a slow or hostile sender. uvicorn's own
`limit_concurrency` counts *every* open connection, so 100 sockets that send half a header
and stall turned every real delivery away with 503 until they timed out (GitHub does not
redeliver by itself: the tag push was lost). Here:

- a connection waiting for its request headers is *pending*: it has a deadline
  (`header_timeout_s`) and does not count toward the 503 limit;
- pending connections are capped per client address (`max_pending_per_client`) and in total
  (`max_pending`): a new connection over a cap sheds the *oldest* pending one, so a stalled
  sender makes room and a delivery that sends its headers at once is never the one dropped;
- the 503 limit (`max_connections`) counts requests whose headers arrived (`InFlightLimit`).

Behind a reverse proxy every connection comes from the proxy's address: the per-client cap is
then the total, and the proxy's own limits (README: "Production front") do the per-client part.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import h11
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("shipyard.webhook")

_SHED_LOG_EVERY_S = 10.0


class PendingConnections:
    """The connections still waiting for their request headers, oldest first, per client."""

    def __init__(self, per_client: int, total: int):
        self.per_client = per_client
        self.total = total
        self._all: dict[Any, str] = {}  # connection -> client address, in arrival order
        self._by_client: dict[str, dict[Any, None]] = {}
        self.shed = 0
        self._shed_logged = 0
        self._logged_at = 0.0

    def __len__(self) -> int:
        return len(self._all)

    def add(self, connection: Any, client: str) -> list[Any]:
        """Register `connection` as pending; the connections to shed to stay within the caps
        (the oldest pending one of the same client, else the oldest of all)."""
        self.discard(connection)
        self._all[connection] = client
        mine = self._by_client.setdefault(client, {})
        mine[connection] = None
        shed: list[Any] = []
        if len(mine) > self.per_client:
            shed.append(next(iter(mine)))
        elif len(self._all) > self.total:
            shed.append(next(iter(self._all)))
        for victim in shed:
            self.discard(victim)
        self.shed += len(shed)
        return shed

    def discard(self, connection: Any) -> None:
        client = self._all.pop(connection, None)
        if client is None:
            return
        mine = self._by_client.get(client)
        if mine is not None:
            mine.pop(connection, None)
            if not mine:
                del self._by_client[client]

    def log_shedding(self) -> None:
        """One summary line at most every 10 s, not one per shed connection (an attack would
        otherwise write the log full)."""
        now = time.monotonic()
        if self.shed > self._shed_logged and now - self._logged_at >= _SHED_LOG_EVERY_S:
            logger.warning(
                "shed %d connections that had not sent their request headers (caps: %d pending "
                "per client, %d in all)",
                self.shed - self._shed_logged,
                self.per_client,
                self.total,
            )
            self._shed_logged, self._logged_at = self.shed, now


class BoundedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for the request line and headers, and caps
    on the connections that have not sent them (see the module docstring).

    uvicorn bounds an idle kept-alive connection, but not one that connects and then sends its
    headers slowly (or never). The body has its own deadline (`body_timeout_s`, in the app)."""

    header_timeout_s = 5.0
    pending = PendingConnections(per_client=32, total=512)

    _header_timer: asyncio.TimerHandle | None = None
    _client_key = "-"

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._client_key = self.client[0] if self.client else "-"
        self._arm()

    def _waiting_for_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _arm(self) -> None:
        """A new request is awaited: start its header deadline and count it pending."""
        if not self._waiting_for_headers():
            return  # a pipelined request already arrived with the last one
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._expire)
        for victim in self.pending.add(self, self._client_key):
            victim.shed()
        self.pending.log_shedding()

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None
        self.pending.discard(self)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._header_timer is not None and not self._waiting_for_headers():
            self._disarm()  # headers complete (or refused): no longer pending

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def shed(self) -> None:
        """Close this connection to make room: it had not sent its headers (no answer: there
        is no request to answer)."""
        self._disarm()
        if not self.transport.is_closing():
            self.transport.close()

    def _expire(self) -> None:
        self._header_timer = None
        self.pending.discard(self)
        if self._waiting_for_headers():
            logger.info(
                "connection closed: no request headers within %.0f s", self.header_timeout_s
            )
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol_class(
    header_timeout_s: float, max_pending_per_client: int, max_pending: int
) -> type[BoundedH11Protocol]:
    """A BoundedH11Protocol with these limits and its own pending set (one per server)."""
    attributes = {
        "header_timeout_s": header_timeout_s,
        "pending": PendingConnections(max_pending_per_client, max_pending),
    }
    return type("ReceiverH11Protocol", (BoundedH11Protocol,), attributes)


class InFlightLimit:
    """ASGI middleware: at most `limit` requests at once (headers received), more are answered
    503 with Retry-After. Unlike uvicorn's `limit_concurrency`, connections that have not sent
    their headers are not counted: they are the protocol's to bound."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            from starlette.responses import JSONResponse

            logger.warning("busy: %d requests in flight, answered 503", self.active)
            busy = JSONResponse(
                {
                    "status": "busy",
                    "detail": f"more than {self.limit} requests at once: redeliver shortly",
                },
                status_code=503,
                headers={"Retry-After": "1"},
            )
            await busy(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
