"""uvicorn's h11 protocol with the limits it lacks, so slow or greedy clients cannot hold the
server (slowloris):

- a request's headers must arrive within HEADER_SECONDS of the connection opening (or of the
  previous answer, on a kept-alive connection), its body within BODY_SECONDS of its headers;
  past that the connection is closed;
- at most MAX_CONNECTIONS open connections, and MAX_PER_CLIENT from one address: a
  connection past either is closed at once, before anything is read;
- a request h11 cannot parse (bad request line or header) is answered in JSON, as the app
  answers every other error.

uvicorn (0.55) has only a keep-alive timeout, armed after an answer: a connection that never
finishes its first request's headers or body is never timed out, and `limit_concurrency`
answers 503 to new requests but keeps every connection open. It takes a protocol class as
`http=`, so these limits are a subclass of its own h11 protocol rather than another server.
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_SECONDS = 10.0
BODY_SECONDS = 20.0  # a 1 MB body (security.MAX_BODY) at 50 KB/s
MAX_CONNECTIONS = 512
MAX_PER_CLIENT = 64
BAD_REQUEST = json.dumps({"error": "bad request: the request line or a header is not valid HTTP/1.1"}).encode()


class GuardedH11Protocol(H11Protocol):
    deadline: asyncio.TimerHandle | None = None
    waiting_for: str | None = None  # "headers" or "body": what the deadline is for

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self._too_many():
            transport.abort()  # before a request: there is nothing HTTP could answer yet
            return
        self._watch()

    def _too_many(self) -> bool:
        if len(self.connections) > MAX_CONNECTIONS:
            return True
        if self.client is None:
            return False
        same = [c for c in self.connections if (getattr(c, "client", None) or ("",))[0] == self.client[0]]
        return len(same) > MAX_PER_CLIENT

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Arm (or keep, or drop) the deadline for what the client owes now: a deadline runs
        from when the client started to owe it, however slowly its bytes trickle in."""
        if self.transport is None or self.transport.is_closing():
            self._stop_deadline()
            return
        state = self.conn.their_state
        owed = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if owed == self.waiting_for:
            return
        self._stop_deadline()
        self.waiting_for = owed
        if owed is not None:
            seconds = HEADER_SECONDS if owed == "headers" else BODY_SECONDS
            self.deadline = self.loop.call_later(seconds, self._too_slow)

    def _stop_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline = None
        self.waiting_for = None

    def _too_slow(self) -> None:
        self.deadline = None
        if not self.transport.is_closing():
            self.logger.info("imgrag: closed a connection from %s: its request's %s came too slowly",
                             self.client[0] if self.client else "?", self.waiting_for)
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what h11 cannot parse, in JSON."""
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        try:
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                          h11.Data(data=BAD_REQUEST), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event) or b"")
        except h11.LocalProtocolError:  # an answer was already under way: just close
            pass
        self.transport.close()
