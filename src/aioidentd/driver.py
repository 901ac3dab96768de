"""The only I/O under the servers: non-blocking sockets on the event loop's selector.

Why its own driver instead of asyncio's transports: a transport per connection costs a
protocol object, its buffers and five loop callbacks before the first byte, which is most
of what an ident answer costs; and the protocols served here (ident, the claims socket,
the metrics endpoint) are all the same shape: short lines in, short lines out, bounded
everything. So each connection is a *session*, a sans-IO object (bytes in, events out,
bytes to send, a deadline and an end decision as plain attributes; no socket, no clock),
and this module is the thin part that does the I/O for all of them:

* ``loop.add_reader``/``add_writer`` on the socket (public API, the same on uvloop), and
  the first read done inside the accept callback: with ``TCP_DEFER_ACCEPT`` the request is
  usually there, and a one-request connection is then answered and closed without ever
  being registered with the selector;
* its own bounded write buffer: above ``high_water`` the session is neither read nor
  resumed until the peer reads;
* one deadline wheel (a heap and one loop timer) for every connection's deadline, instead
  of a timer handle per connection; before a deadline acts the socket is read, so a process
  that was stopped and resumes with its timers overdue never closes over a request that
  has arrived;
* a budget per callback: a session with more input buffered than one call may process is
  resumed on a later loop iteration, and its socket is not read meanwhile, so a client that
  pipelines thousands of requests cannot starve the others;
* the connection limit, with eviction of the session silent longest;
* every failure of a session or service caught and logged, rate-limited.

The session and service interfaces are :class:`Session` and :class:`Service`.
"""

from __future__ import annotations

import asyncio
import fcntl
import heapq
import itertools
import logging
import math
import select
import socket
import struct
import termios
from collections.abc import Iterable
from typing import Any, Final, Protocol

from aioidentd._ratelimit import RateLimitedLog

__all__ = [
    "ABORT",
    "CLOSE",
    "KEEP",
    "SHUT_WR",
    "Channel",
    "Driver",
    "Service",
    "Session",
    "unread",
]

logger = logging.getLogger(__name__)

#: What a session wants done with its connection (``Session.end``).
KEEP: Final = 0
#: Once everything is sent: half-close (FIN), keep reading until the peer's EOF.
SHUT_WR: Final = 1
#: Once everything is sent: close; a peer that does not read gets LINGER seconds.
CLOSE: Final = 2
#: Close now, whatever is left to send.
ABORT: Final = 3

#: How long a connection whose session wants it closed may take to flush its last bytes
#: to a peer that does not read them, before it is aborted.
LINGER: Final = 2.0


class Session(Protocol):
    """What a sans-IO connection provides to the driver (see the module notes).

    The attributes are read after every call; each method returns the events for the
    service (any iterable, or None when there are none).
    """

    deadline: float
    want_read: bool
    more: bool
    end: int
    activity: int
    evictable: bool

    def receive(self, data: bytes, now: float) -> Iterable[Any] | None: ...

    def resume(self, now: float) -> Iterable[Any] | None: ...

    def timer(self, now: float) -> Iterable[Any] | None: ...

    def data_to_send(self) -> bytes: ...


class Service(Protocol):
    """What owns the connections' meaning: makes each session and acts on its events."""

    def open(self, channel: Channel, now: float) -> Session | None: ...

    def events(self, channel: Channel, events: Iterable[Any]) -> None: ...

    def closed(self, channel: Channel) -> None: ...


class _NoCounters:
    __slots__ = ("connections_accepted", "connections_evicted", "connections_refused")

    def __init__(self) -> None:
        self.connections_accepted = 0
        self.connections_refused = 0
        self.connections_evicted = 0


def unread(sock: socket.socket | None) -> int:
    """Octets the kernel has received on ``sock`` and nobody has read."""
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0  # closed meanwhile: nothing left to read
    count: int = struct.unpack("i", raw)[0]
    return count


class Channel:
    """One connection: its socket, its session and what the driver keeps for it."""

    __slots__ = (
        "_active",
        "_armed",
        "_closed",
        "_eof",
        "_lost",
        "_mask",
        "_out",
        "_reading",
        "_scheduled",
        "_shut",
        "_writing",
        "context",
        "driver",
        "fd",
        "peer",
        "session",
        "sock",
    )

    def __init__(self, driver: Driver, sock: socket.socket, peer: Any) -> None:
        self.driver = driver
        self.sock = sock
        self.fd = sock.fileno()
        #: The peer's socket address as the kernel gave it (``getpeername()``).
        self.peer = peer
        self.session: Session = _NO_SESSION
        #: The service's own value for this connection (the driver never reads it).
        self.context: Any = None
        self._out: bytearray | None = None
        self._armed = math.inf
        self._active = 0
        self._reading = False
        self._writing = False
        self._scheduled = False
        self._eof = False
        self._shut = False
        self._mask = -1  # what the poller watches (-1: not registered)
        self._closed = False
        self._lost: asyncio.Future[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def reading(self) -> bool:
        """Whether the socket is being read (False: paused, or done reading)."""
        return self._reading

    @property
    def buffered(self) -> int:
        """Octets written by the session and not yet taken by the kernel."""
        out = self._out
        return len(out) if out is not None else 0

    def update(self) -> None:
        """The service changed the session from outside a driver callback (an answer from
        a task): send what it has to send and apply its decisions."""
        if not self._closed:
            self.driver._settle(self)

    def abort(self) -> None:
        """Close now, whatever is left to send."""
        if not self._closed:
            self.driver._drop(self)

    def unread(self) -> int:
        """Octets the peer sent that the kernel holds and nobody has read yet."""
        return 0 if self._closed else unread(self.sock)

    def read_now(self) -> None:
        """Read what the kernel holds now (the server is closing: answer it)."""
        if not self._closed and not self._eof:
            self.driver._on_readable(self)

    def __repr__(self) -> str:
        return f"<Channel fd={self.fd} peer={self.peer!r}{' closed' if self._closed else ''}>"


class _Nothing:
    """The session of a channel before its service made one (never called)."""

    deadline = math.inf
    want_read = False
    more = False
    end = ABORT
    activity = 0
    evictable = True

    def receive(self, data: bytes, now: float) -> None:
        return None

    def resume(self, now: float) -> None:
        return None

    def timer(self, now: float) -> None:
        return None

    def data_to_send(self) -> bytes:
        return b""


_NO_SESSION: Final = _Nothing()


class Driver:
    """Serves every connection of one service (see the module notes)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        service: Service,
        name: object = "",
        *,
        max_connections: int = 1024,
        high_water: int = 64 * 1024,
        low_water: int = 16 * 1024,
        read_size: int = 16 * 1024,
        counters: Any = None,
        poller: str | None = None,
    ) -> None:
        self._loop = loop
        self._time = loop.time
        self.service = service
        self.name = name
        self.max_connections = max_connections
        self.high_water = high_water
        self.low_water = low_water
        self.read_size = read_size
        self.counters = counters if counters is not None else _NoCounters()
        #: Connections that were ever registered with the selector (the others were served
        #: whole inside the accept callback).
        self.watched = 0
        #: Open connections, the one silent longest first (a dict as an ordered set).
        self.channels: dict[Channel, None] = {}
        self._heap: list[tuple[float, int, Channel]] = []
        self._seq = itertools.count()
        self._stale = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = math.inf
        self.log = RateLimitedLog(logger, call_later=loop.call_later)
        self._poller: _Epoll | _LoopPoller
        if poller == "epoll" or (poller is None and hasattr(select, "epoll")):
            self._poller = _Epoll(self)
        else:
            self._poller = _LoopPoller(self)

    def __len__(self) -> int:
        return len(self.channels)

    # -- new connections ----------------------------------------------------------------

    def accept(self, sock: socket.socket, addr: Any) -> None:
        """Serve a connection just accepted (the listener's callback): room is made or it
        is refused at the limit, then it is read at once (see the module notes)."""
        channels = self.channels
        if len(channels) >= self.max_connections and not self._make_room():
            self.counters.connections_refused += 1
            sock.close()
            return
        # TCP_NODELAY and the send buffer come from the listening socket (see
        # listener.tune): accepted sockets inherit them, no system call here.
        sock.setblocking(False)
        self._open(Channel(self, sock, addr), first_read=True)

    def adopt(self, sock: socket.socket) -> Channel | None:
        """Serve a connection accepted elsewhere (inetd, systemd ``Accept=yes``); its
        ``closed_future`` resolves once it is gone. None if it is gone already."""
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            peer = sock.getpeername()
        except OSError:
            peer = None
        channel = Channel(self, sock, peer)
        channel._lost = self._loop.create_future()
        self._open(channel, first_read=False)
        return None if channel._closed else channel

    def _open(self, channel: Channel, first_read: bool) -> None:
        now = self._time()
        try:
            session = self.service.open(channel, now)
        except Exception:
            self._failed(channel, "opening a connection")
            channel.sock.close()
            channel._closed = True
            return
        if session is None:
            channel._closed = True
            channel.sock.close()
            if channel._lost is not None:
                channel._lost.set_result(None)
            return
        channel.session = session
        channel._active = session.activity
        self.channels[channel] = None
        self.counters.connections_accepted += 1
        if first_read:
            self._on_readable(channel)  # settles
        else:
            self._settle(channel)

    def _make_room(self) -> bool:
        """Close the evictable connection silent longest; one whose request already waits
        unread in the kernel is passed over while a silent one is left."""
        spare: Channel | None = None
        for channel in self.channels:
            if not channel.session.evictable:
                continue
            if channel.unread():
                spare = spare or channel
                continue
            self._evict(channel)
            return True
        if spare is not None:
            self._evict(spare)
            return True
        self.log.log(
            "refused",
            logging.WARNING,
            "connections refused",
            "%s: connection limit (%d) reached and every connection is busy; "
            "refusing a new connection",
            self.name,
            self.max_connections,
        )
        return False

    def _evict(self, channel: Channel) -> None:
        self.counters.connections_evicted += 1
        self.log.log(
            "evicted",
            logging.INFO,
            "connections closed to make room",
            "%s: connection limit (%d) reached; closing the connection from %s, "
            "silent longest, to serve a new one",
            self.name,
            self.max_connections,
            _show(channel.peer),
        )
        self._drop(channel)

    # -- reading ------------------------------------------------------------------------

    def _on_readable(self, channel: Channel) -> None:
        try:
            data = channel.sock.recv(self.read_size)
        except (BlockingIOError, InterruptedError):
            self._settle(channel)
            return
        except OSError as exc:
            logger.debug("%s: %s from %s", self.name, exc, _show(channel.peer))
            self._drop(channel)
            return
        if not data:
            channel._eof = True
        try:
            events = channel.session.receive(data, self._time())
            if events:
                self.service.events(channel, events)
        except Exception:
            self._failed(channel, "a connection's input")
            return
        self._settle(channel)

    def _resume(self, channel: Channel) -> None:
        channel._scheduled = False
        if channel._closed:
            return
        session = channel.session
        if session.more and channel.buffered < self.high_water:
            try:
                events = session.resume(self._time())
                if events:
                    self.service.events(channel, events)
            except Exception:
                self._failed(channel, "a connection's input")
                return
        self._settle(channel)

    # -- writing and deciding -----------------------------------------------------------

    def _settle(self, channel: Channel) -> None:
        """After any call into the session: send what it has, apply its end, reading,
        resuming and deadline."""
        if channel._closed:
            return
        session = channel.session
        data = session.data_to_send()
        if data:
            out = channel._out
            if out is None:
                try:
                    sent = channel.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    logger.debug("%s: %s to %s", self.name, exc, _show(channel.peer))
                    self._drop(channel)
                    return
                if sent < len(data):
                    channel._out = bytearray(data[sent:])
            else:
                out += data
        end = session.end
        buffered = channel.buffered
        if end:
            if end == ABORT or (not buffered and (end == CLOSE or channel._eof)):
                self._drop(channel)
                return
            if end == SHUT_WR and not buffered and not channel._shut:
                channel._shut = True
                try:
                    channel.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    # The peer reset the connection before we half-closed (ENOTCONN):
                    # nothing is left to drain.
                    self._drop(channel)
                    return
            if end == CLOSE:
                # Only the flush is left: the peer gets LINGER seconds to read it.
                linger = self._time() + LINGER
                if linger < channel._armed:
                    self._arm(channel, linger)
        watch = False
        if buffered and not channel._writing:
            channel._writing = True
            watch = True
        if session.activity != channel._active:
            channel._active = session.activity
            channels = self.channels
            del channels[channel]
            channels[channel] = None  # now the last one to be evicted
        room = buffered < self.high_water
        more = session.more
        if more and room and not channel._scheduled:
            channel._scheduled = True
            self._loop.call_soon(self._resume, channel)
        read = (session.want_read or channel._shut) and room and not more and not channel._eof
        if read != channel._reading:
            channel._reading = read
            watch = True
        if watch:
            self._poller.watch(channel)
        deadline = session.deadline
        if deadline < channel._armed:
            self._arm(channel, deadline)

    def _on_writable(self, channel: Channel) -> None:
        out = channel._out
        if channel._closed or out is None:
            return
        try:
            sent = channel.sock.send(out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            logger.debug("%s: %s to %s", self.name, exc, _show(channel.peer))
            self._drop(channel)
            return
        del out[:sent]
        if out:
            if len(out) >= self.low_water:
                return
        else:
            channel._out = None
            channel._writing = False
            self._poller.watch(channel)
        self._settle(channel)

    # -- the deadline wheel -------------------------------------------------------------

    def _arm(self, channel: Channel, when: float) -> None:
        channel._armed = when
        heapq.heappush(self._heap, (when, next(self._seq), channel))
        if when < self._timer_when:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_when = when
            self._timer = self._loop.call_at(when, self._on_wheel)

    def _on_wheel(self) -> None:
        self._timer = None
        self._timer_when = math.inf
        heap = self._heap
        now = self._time()
        due: list[Channel] = []
        while heap and heap[0][0] <= now:
            when, _, channel = heapq.heappop(heap)
            if channel._closed or when != channel._armed:
                self._stale = max(0, self._stale - 1)
                continue
            channel._armed = math.inf
            due.append(channel)
        # Deadlines armed while these act (even overdue ones) wait for the next turn.
        for channel in due:
            if not channel._closed:
                self._expire(channel, now)
        if heap and self._timer is None:
            when = heap[0][0]
            self._timer_when = when
            self._timer = self._loop.call_at(when, self._on_wheel)

    def _expire(self, channel: Channel, now: float) -> None:
        session = channel.session
        if session.end >= CLOSE:
            if channel.buffered:
                logger.debug("%s: linger over for %s", self.name, _show(channel.peer))
                self._drop(channel)
            return
        if session.deadline > now:
            self._settle(channel)  # pushed back meanwhile: re-armed
            return
        # Whatever arrived while the process was not running is read before any deadline
        # acts on it (a query that arrived is answered, not closed over).
        if session.more and channel.buffered < self.high_water:
            self._resume(channel)
        elif channel._reading and not channel._eof:
            self._on_readable(channel)
        if channel._closed:
            return
        session = channel.session
        if session.deadline > now:
            self._settle(channel)
            return
        try:
            events = session.timer(now)
            if events:
                self.service.events(channel, events)
        except Exception:
            self._failed(channel, "a connection's deadline")
            return
        self._settle(channel)

    def _compact(self) -> None:
        """Drop the entries of closed connections from the wheel (amortised: when most of
        it is stale), so a high connection rate does not grow it by their deadlines."""
        self._heap = [e for e in self._heap if not e[2]._closed and e[0] == e[2]._armed]
        heapq.heapify(self._heap)
        self._stale = 0

    # -- ending -------------------------------------------------------------------------

    def _drop(self, channel: Channel) -> None:
        """Close the connection now and tell the service."""
        if channel._closed:
            return
        channel._closed = True
        channel._reading = channel._writing = False
        self._poller.forget(channel)
        channel._out = None
        channel.sock.close()
        self.channels.pop(channel, None)
        if channel._armed != math.inf:
            self._stale += 1
            if self._stale > 64 and self._stale * 2 > len(self._heap):
                self._compact()
        try:
            self.service.closed(channel)
        except Exception:
            self._failed(None, "a closed connection")
        lost = channel._lost
        if lost is not None and not lost.done():
            lost.set_result(None)

    def _failed(self, channel: Channel | None, what: str) -> None:
        self.log.log(
            "unexpected",
            logging.ERROR,
            "unexpected failures",
            "%s: unexpected failure in %s from %s; connection closed",
            self.name,
            what,
            _show(channel.peer) if channel is not None else "-",
            exc_info=True,
        )
        if channel is not None:
            self._drop(channel)

    def close_all(self) -> None:
        """Abort every connection and stop the wheel (the end of a server)."""
        for channel in list(self.channels):
            self._drop(channel)
        self._poller.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_when = math.inf
        self._heap.clear()
        self._stale = 0
        self.log.close()


class _Epoll:
    """The connections' sockets on an epoll set of the driver's own, which the event loop
    watches as one descriptor (``loop.add_reader`` on the epoll's, public API on every
    loop). Why not ``add_reader`` per socket: asyncio's costs a handle, a selector key
    and two dictionary look-ups per registration, about a third of a fresh connection's
    CPU and 350 octets of every idle connection; here a socket costs one system call
    and one dictionary entry. A closed socket leaves the set by itself.
    """

    #: Events handled per loop callback: the rest wait for the next iteration.
    BATCH: Final = 64

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._epoll = select.epoll()
        self._fds: dict[int, Channel] = {}
        self._watching = False
        self._loop = driver._loop

    def watch(self, channel: Channel) -> None:
        mask = (select.EPOLLIN if channel._reading else 0) | (
            select.EPOLLOUT if channel._writing else 0
        )
        if mask == channel._mask:
            return
        fd = channel.fd
        if channel._mask < 0:
            self._epoll.register(fd, mask)
            self._fds[fd] = channel
            self._driver.watched += 1
            if not self._watching:
                self._watching = True
                self._loop.add_reader(self._epoll.fileno(), self._on_events)
        else:
            self._epoll.modify(fd, mask)
        channel._mask = mask

    def forget(self, channel: Channel) -> None:
        """Before the socket is closed (which takes it out of the set)."""
        if channel._mask >= 0:
            channel._mask = -1
            if self._fds.get(channel.fd) is channel:
                del self._fds[channel.fd]

    def _on_events(self, _: object = None) -> None:
        driver = self._driver
        fds = self._fds
        for fd, events in self._epoll.poll(0, self.BATCH):
            channel = fds.get(fd)
            if channel is None or channel._closed:
                continue
            if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                if channel._reading:
                    driver._on_readable(channel)
                elif not events & select.EPOLLIN:
                    # Reset while not being read (paused): nothing can be answered, and
                    # a level-triggered error reported for ever would spin the loop.
                    driver._drop(channel)
                    continue
            if events & select.EPOLLOUT and channel._writing and not channel._closed:
                driver._on_writable(channel)

    def close(self) -> None:
        if self._watching:
            self._watching = False
            self._loop.remove_reader(self._epoll.fileno())
        self._fds.clear()
        self._epoll.close()


class _LoopPoller:
    """The same with the event loop's own ``add_reader``/``add_writer`` per socket, where
    there is no epoll."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._loop = driver._loop

    def watch(self, channel: Channel) -> None:
        was = channel._mask
        if was < 0:
            was = 0
            self._driver.watched += 1
        loop, fd, driver = self._loop, channel.fd, self._driver
        reading, writing = channel._reading, channel._writing
        if reading != bool(was & 1):
            if reading:
                loop.add_reader(fd, driver._on_readable, channel)
            else:
                loop.remove_reader(fd)
        if writing != bool(was & 2):
            if writing:
                loop.add_writer(fd, driver._on_writable, channel)
            else:
                loop.remove_writer(fd)
        channel._mask = (1 if reading else 0) | (2 if writing else 0)

    def forget(self, channel: Channel) -> None:
        if channel._mask > 0:
            if channel._mask & 1:
                self._loop.remove_reader(channel.fd)
            if channel._mask & 2:
                self._loop.remove_writer(channel.fd)
        channel._mask = -1

    def close(self) -> None:
        pass


def _show(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer or "-")


def closed_future(channel: Channel) -> asyncio.Future[None] | None:
    """The future that resolves when an adopted connection is gone."""
    return channel._lost
