"""The REST port's connections, each bounded in time, in how far its client may run ahead of its
answers, and all together in file descriptors.

Written against uvicorn 0.54's httptools protocol, which bounds none of these: measured, a
connection that sends nothing, half its headers, or its headers and then no body stays open for
good (still open after 70 s); a client that pipelines requests without reading the answers is
read without limit (60 MB of requests took the server's RSS from 527 MB to 2.1 GB, one parsed
request object per pipelined request); and when every descriptor is taken, each new connection
is reset (libuv accepts and closes it) while the idle ones stay, and the models' own file reads
fail with EMFILE. ``Protocol`` is uvicorn's, with:

- **time**: from its accept, and from the first byte of each request, a connection has
  ``HEADER_TIMEOUT`` to complete the request's headers (408 and closed if it had begun one,
  closed silently if it sent nothing); between requests it may stay idle ``KEEP_ALIVE``. The body
  is the app's to bound (``consumer.serving.http``), and a request being answered has the REST
  timeout. Uvicorn's own keep-alive timer stays, and ends no connection before ours would.
- **pipelining**: at most ``MAX_PIPELINED`` requests parsed ahead of the one being answered. The
  bytes are parsed a piece at a time, and the rest of a read waits unparsed, with reading paused,
  until the answers catch up: a client that does not read its answers is not read either. One
  whose answers have taken no byte for ``WRITE_TIMEOUT`` is closed.
- **descriptors** (``Connections``): a reserve of RLIMIT_NOFILE is kept for everything else the
  process opens (models' files, gRPC, the parse helper). A new connection that would cut into it
  closes the connections that are not being answered, least recently active first; if none can
  go, the new one is closed. The accept queue is no longer than half the reserve, so a burst of
  accepts the loop makes before any of this runs still fits in it.
"""

from __future__ import annotations

import functools
import os
import resource
import time
from collections import OrderedDict

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from consumer.serving.episodes import Episode
from consumer.serving.json_render import render_error

HEADER_TIMEOUT = 5.0  # seconds from accept, or a request's first byte, to its complete headers
KEEP_ALIVE = 60.0  # seconds an idle connection stays open between requests (uvicorn's default: 5)
WRITE_TIMEOUT = 10.0  # seconds answers may wait, none of their bytes taken, before we close
MAX_PIPELINED = 16  # requests parsed ahead of the one being answered
PIECE = 8192  # bytes parsed at a time: a piece of tiny pipelined requests is ~200 of them
RESAMPLE_SECONDS = 1.0  # how often the descriptors the rest of the process holds are counted

_TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
              b"connection: close\r\ncontent-length: %d\r\n\r\n%s")


def reserve(limit: int) -> int:
    """Descriptors kept for everything but REST connections, under a soft limit of ``limit``."""
    return max(64, limit // 8)


def backlog() -> int:
    """The accept queue's length: the connections libuv may accept in one go before the first
    of them is seen here must fit in the reserve."""
    return max(16, min(1024, reserve(_limit() or 1 << 20) // 2))


def _limit() -> int | None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


class Connections:
    """Every open REST connection, least recently active first, and the descriptor budget they
    share. Used on the event loop's thread only."""

    def __init__(self) -> None:
        self._by_activity: OrderedDict[Protocol, None] = OrderedDict()
        self._others = 0  # descriptors held by the rest of the process, at the last count
        self._counted = float("-inf")
        self.shed = Episode("connections_shed", "connections_shed_cleared")

    def __len__(self) -> int:
        return len(self._by_activity)

    def opened(self, connection: "Protocol") -> None:
        self._by_activity[connection] = None
        limit = _limit()
        if limit is None:
            return
        excess = len(self._by_activity) + self._held_elsewhere() + reserve(limit) - limit
        if excess <= 0:
            self.shed.quiet()
            return
        # a little more than the excess, so that a flood does not pay this at every accept
        closed = self._close_least_active(excess + reserve(limit) // 8)
        if closed < excess:  # all the others are being answered: the newcomer goes
            self._close(connection)
            closed += 1
        self.shed.happened(closed, limit=limit, connections=len(self._by_activity),
                           elsewhere=self._others)

    def active(self, connection: "Protocol") -> None:
        if connection in self._by_activity:
            self._by_activity.move_to_end(connection)

    def closed(self, connection: "Protocol") -> None:
        self._by_activity.pop(connection, None)

    def _held_elsewhere(self) -> int:
        now = time.monotonic()
        if now - self._counted >= RESAMPLE_SECONDS:
            try:
                total = len(os.listdir("/proc/self/fd")) - 1  # less the listing's own
            except OSError:  # no /proc, or no descriptor left to list it with
                total = len(self._by_activity) + self._others
            self._others, self._counted = max(0, total - len(self._by_activity)), now
        return self._others

    def _close_least_active(self, count: int) -> int:
        closed = 0
        for connection in list(self._by_activity):
            if closed >= count:
                break
            if not connection.answering():
                self._close(connection)
                closed += 1
        return closed

    def _close(self, connection: "Protocol") -> None:
        self._by_activity.pop(connection, None)  # counted out now; its descriptor goes next turn
        connection.transport.close()


class _Flow(FlowControl):
    """uvicorn's flow control, except that reading stays paused while bytes already read wait
    to be parsed: uvicorn resumes it at every answer, which let one client queue requests
    without end."""

    def __init__(self, transport, connection: "Protocol") -> None:
        super().__init__(transport)
        self._connection = connection

    def resume_reading(self) -> None:
        if not self._connection.behind():
            super().resume_reading()


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, bounded in time, pipelining and descriptors (see the
    module's docstring). ``protocol(connections)`` is what uvicorn's ``http`` option takes."""

    def __init__(self, *args, connections: Connections, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.registry = connections
        self._deadline = None  # the read timer: headers, or idle between requests
        self._write_watch = None
        self._write_left = 0  # bytes waiting to be written when the write watch was set
        self._unparsed = memoryview(b"")
        self._in_headers = False  # a request has begun and its headers are not complete

    # -- the connection ---------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.flow = _Flow(transport, self)
        self._read_within(HEADER_TIMEOUT)
        self.registry.opened(self)

    def connection_lost(self, exc) -> None:
        self._cancel_timers()
        self._unparsed = memoryview(b"")
        self.registry.closed(self)
        super().connection_lost(exc)

    def answering(self) -> bool:
        """Whether a whole request has come and its answer is not all written."""
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete and not cycle.more_body

    def behind(self) -> bool:
        """Whether bytes already read wait to be parsed (then reading stays paused)."""
        return len(self._unparsed) > 0

    # -- reading ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.registry.active(self)
        if self._unparsed:  # reading was paused; a read already under way may still land
            data = bytes(self._unparsed) + data
        self._unparsed = memoryview(data)
        self._parse()

    def _parse(self) -> None:
        """Feed the parser a piece at a time while fewer than ``MAX_PIPELINED`` requests wait
        behind the one being answered; keep the rest, and stop reading, until they are fewer."""
        while (self._unparsed and len(self.pipeline) < MAX_PIPELINED and self.parser is not None
               and not self.transport.is_closing()):
            piece, self._unparsed = self._unparsed[:PIECE], self._unparsed[PIECE:]
            super().data_received(piece)  # uvicorn's: parse, or 400 on bytes that are not HTTP
        if self.transport.is_closing():
            self._unparsed = memoryview(b"")
        elif self._unparsed:
            self.flow.pause_reading()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._read_within(HEADER_TIMEOUT)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._cancel(self._deadline)
        self._deadline = None
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next pipelined request, if one waits
        if self.transport.is_closing():
            return
        self.registry.active(self)
        if not self._in_headers and (self.cycle is None or self.cycle.response_complete):
            self._read_within(KEEP_ALIVE)  # idle until the next request
        self._parse()
        if not self.behind():
            self.flow.resume_reading()

    # -- timers -----------------------------------------------------------------------------

    def _read_within(self, seconds: float) -> None:
        self._cancel(self._deadline)
        self._deadline = self.loop.call_later(seconds, self._read_timed_out)

    def _read_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._in_headers and not self.answering():
            body = render_error(f"the request's headers did not arrive within "
                                f"{HEADER_TIMEOUT:g} s")
            self.transport.write(_TIMED_OUT % (len(body), body))
        self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_writes()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel(self._write_watch)
        self._write_watch = None

    def _watch_writes(self) -> None:
        self._cancel(self._write_watch)
        self._write_left = self.transport.get_write_buffer_size()
        self._write_watch = self.loop.call_later(WRITE_TIMEOUT, self._writes_checked)

    def _writes_checked(self) -> None:
        """Answers still wait: close, unless the client took some of them meanwhile."""
        self._write_watch = None
        if self.transport.is_closing() or not self.flow.write_paused:
            return
        if self.transport.get_write_buffer_size() < self._write_left:
            self._watch_writes()  # a slow reader, not a stopped one
            return
        self.transport.abort()

    def _cancel_timers(self) -> None:
        for timer in (self._deadline, self._write_watch):
            self._cancel(timer)
        self._deadline = self._write_watch = None

    @staticmethod
    def _cancel(timer) -> None:
        if timer is not None:
            timer.cancel()


def protocol(connections: Connections):
    """The protocol factory for ``uvicorn.Config(http=...)``."""
    return functools.partial(Protocol, connections=connections)
