"""The ident server in a thread of its own, for synchronous programs and test suites.

Why: a blocking program (the ``irc`` package's ``SimpleIRCClient``, a script, a test
that is not async) cannot run an event loop of its own beside its work. Like aiosmtpd's
``Controller``, this one starts a thread with a private event loop, starts the server in
it, and gives the caller thread-safe ways to claim connections and register handlers;
``stop()`` closes the server and the loop and joins the thread, leaving no thread, socket,
task or timer behind. Claims may be made from any thread (the claim registry locks its
changes); handler registration and other calls into the loop go through
:meth:`Controller.call`, which runs them on the loop's thread and waits for the result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, Final, TypeVar

from aioidentd.claims import Claim, ClaimTarget, PendingConnection
from aioidentd.claims.connect import Answer, create_connection_sync
from aioidentd.protocol import Address
from aioidentd.server import Handler, IdentServer

__all__ = ["Controller", "serving"]

T = TypeVar("T")

#: How long start() waits for the server to listen, and stop() for it to close.
DEFAULT_TIMEOUT: Final = 10.0


class Controller:
    """Run ``server`` in a background thread with its own event loop.

    ``start()`` returns once the server listens (or raises what ``server.start()`` raised,
    e.g. :class:`OSError` for a port in use, leaving no thread behind); ``stop()`` closes
    the server (answering waiting queries with their fallback), stops the loop and joins
    the thread. Also a context manager::

        with aioidentd.Controller(aioidentd.IdentServer("127.0.0.1", 0)) as controller:
            sock = controller.create_connection(("irc.example.net", 6667), user_id="carol")

    Every method may be called from any thread.

    :param server: the server to run; it must not be started already. Its ``name``, if
        any, names the thread.
    :param timeout: seconds ``start()`` waits for the server to listen and ``stop()`` for
        the thread to end, so that a wedged server fails the caller instead of hanging
        it.
    :param loop_factory: makes the thread's event loop (``uvloop.new_event_loop``, or a
        loop with a policy of the application's); by default
        :func:`asyncio.new_event_loop`.
    """

    def __init__(
        self,
        server: IdentServer,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    ) -> None:
        self.server = server
        self.timeout = timeout
        self._loop_factory = loop_factory or asyncio.new_event_loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread and the server in it; return once it listens.

        :raises OSError: the server could not listen (a port in use, an address this
            host does not have); no thread is left behind.
        :raises RuntimeError: the controller was started already.
        :raises TimeoutError: the server was not listening within ``timeout`` seconds.
        """
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("controller already started")
            ready: concurrent.futures.Future[None] = concurrent.futures.Future()
            thread = threading.Thread(
                target=self._run,
                args=(ready,),
                name=f"aioidentd-controller-{self.server.name or id(self)}",
                daemon=True,
            )
            thread.start()
            try:
                ready.result(self.timeout)
            except BaseException:
                thread.join(self.timeout)
                raise
            self._thread = thread

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        loop = self._loop_factory()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(loop, ready))
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()
                self._loop = None

    async def _serve(
        self, loop: asyncio.AbstractEventLoop, ready: concurrent.futures.Future[None]
    ) -> None:
        try:
            await self.server.start()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        self._stopped = asyncio.Event()
        self._loop = loop
        ready.set_result(None)
        try:
            await self._stopped.wait()
        finally:
            await self.server.close()

    def stop(self) -> None:
        """Close the server, stop the loop and join the thread (a no-op when stopped)."""
        with self._lock:
            thread, loop, stopped = self._thread, self._loop, self._stopped
            if thread is None:
                return
            if threading.current_thread() is thread:
                raise RuntimeError("stop() called from the controller's own thread")
            if loop is not None and stopped is not None and not loop.is_closed():
                with suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(stopped.set)
            thread.join(self.timeout)
            if thread.is_alive():
                raise RuntimeError(f"the controller's thread did not stop in {self.timeout} s")
            self._thread = None

    def __enter__(self) -> Controller:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The controller's event loop (only while running)."""
        if self._loop is None:
            raise RuntimeError("controller not running")
        return self._loop

    @property
    def addresses(self) -> list[Address]:
        """Where the server listens (the real port when 0 was asked for)."""
        return self.server.addresses

    @property
    def port(self) -> int:
        """The server's listening port."""
        return self.server.addresses[0][1]

    # -- calls into the loop ------------------------------------------------------------

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(*args)`` on the loop's thread and return its result (or raise
        its exception). From the loop's own thread it is simply called."""
        loop = self.loop
        if threading.current_thread() is self._thread:
            return function(*args)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(function(*args))
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(self.timeout)

    def run(self, coroutine: Awaitable[T]) -> T:
        """Run a coroutine on the loop and wait for its result (not from the loop's
        thread: that would deadlock)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("run() called from the controller's own thread")

        async def wrapper() -> T:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result()

    # -- the server's API, from any thread ----------------------------------------------

    def register(self, handler: Handler) -> None:
        """:meth:`IdentServer.register` on the loop's thread. Handlers run on that thread."""
        self.call(self.server.register, handler)

    def unregister(self, handler: Handler) -> None:
        self.call(self.server.unregister, handler)

    def claim(
        self,
        target: ClaimTarget,
        user_id: str | bytes | None = None,
        *,
        opsys: str = "UNIX",
        charset: str | None = None,
        error: str | None = None,
        remote: tuple[str, int] | None = None,
    ) -> Claim:
        """:meth:`IdentServer.claim`: in force when this returns; ``release()`` from any
        thread too."""
        return self.server.claim(
            target, user_id, opsys=opsys, charset=charset, error=error, remote=remote
        )

    def connecting(self, host: str) -> PendingConnection:
        """:meth:`IdentServer.connecting`, a host name resolved in the calling thread."""
        pending = self.server.connecting(host)
        if not pending.hosts:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            pending.register_addresses([info[4] for info in infos])
        return pending

    def create_connection(
        self,
        address: tuple[str, int],
        *,
        user_id: str | bytes | None = None,
        opsys: str = "UNIX",
        charset: str | None = None,
        error: str | None = None,
        timeout: float | None = None,
        source_address: tuple[str, int] | None = None,
    ) -> socket.socket:
        """``socket.create_connection`` with the connection claimed before it is made.

        A blocking socket, for synchronous clients (wrap it in TLS with
        ``ssl_context.wrap_socket(sock, server_hostname=...)``). The claim ends when the
        socket is closed.
        """
        answer = Answer(user_id, opsys, charset, error)
        return create_connection_sync(
            self.server._claims, address, answer, timeout=timeout, source_address=source_address
        )

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Controller {self.server!r} {state}>"


@contextmanager
def serving(
    host: str | list[str] = "127.0.0.1", port: int = 0, **options: Any
) -> Iterator[Controller]:
    """A started :class:`Controller` for a new :class:`IdentServer` (``port=0``: a free
    port), stopped on exit. The pytest fixture in one line::

        @pytest.fixture
        def identd():
            with aioidentd.serving(multiple=True) as controller:
                yield controller
    """
    with Controller(IdentServer(host, port, **options)) as controller:
        yield controller
