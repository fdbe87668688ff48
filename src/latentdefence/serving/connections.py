"""Connection limits: no client can hold the server by sending slowly, idling, or opening connections without end.

uvicorn's h11 server closes idle kept-alive connections and caps concurrency, but waits for a request's head and body
as long as bytes trickle in (one byte a second held a connection open indefinitely). `deadline_protocol` closes a
connection whose request head is not complete in time; `BodyDeadline` answers 408 to a body that is not."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from ..validation import check_count, check_number
from .guarded import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take and how many may be served at once (`latentdefence serve` flags)."""

    header_timeout_s: float = 10.0     # connection opened (or last response sent) -> request head complete
    body_timeout_s: float = 30.0       # request head -> whole body (8 MB needs ~280 kB/s)
    keep_alive_s: float = 5.0          # an idle kept-alive connection is closed after this
    max_connections: int = 512         # beyond this many connections or requests in flight: 503
    max_header_bytes: int = 16 * 1024  # request line + headers; more: 400

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
            check_number(name, getattr(self, name), low=0.0, low_open=True)
        for name in ("max_connections", "max_header_bytes"):
            check_count(name, getattr(self, name))

    def uvicorn_settings(self) -> dict[str, Any]:
        """Keyword arguments of `uvicorn.Config` enforcing these limits."""
        return {"http": deadline_protocol(self.header_timeout_s), "timeout_keep_alive": self.keep_alive_s,
                "limit_concurrency": self.max_connections, "h11_max_incomplete_event_size": self.max_header_bytes}


class _HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose next request head is not complete in time."""

    head_timeout_s: float = 10.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.head_timeout_s)

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:        # a request head was parsed: the body has its own deadline (BodyDeadline)
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle is None or self.cycle.response_complete:          # waiting for the next request
            self._arm(self.timeout_keep_alive + self.head_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        if not self.transport.is_closing():
            log.info("closed a connection from %s: no complete request head within %g s",
                     self.client[0] if self.client else "?", self.head_timeout_s)
            self.transport.close()


def deadline_protocol(head_timeout_s: float) -> type[H11Protocol]:
    """The h11 protocol class for uvicorn with this request-head deadline."""
    return type("HeadDeadlineH11Protocol", (_HeadDeadline,), {"head_timeout_s": head_timeout_s})


class BodyDeadline:
    """ASGI middleware: 408 for a request whose body has not arrived within `seconds` of its head."""

    def __init__(self, app: Callable[..., Awaitable[None]], seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline, body_done = loop.time() + self.seconds, False

        async def timed() -> Any:
            nonlocal body_done
            if body_done:                   # after the body: waiting for a disconnect has no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise InputError(f"request body not received within {self.seconds:g} s "
                                 "(serve --body-timeout)", status=408) from None
            body_done = not message.get("more_body", False)
            return message

        await self.app(scope, timed, send)
