"""The host identd: the process life cycle around an :class:`~aioidentd.server.IdentServer`
answering through :class:`~aioidentd.daemon.responder.KernelResponder` (overrides,
privileges, signals, reloads); where the sockets come from is :mod:`.sockets`, the worker
processes are :mod:`.supervisor`.

The order of start-up is the point of this module: everything that needs root (binding
port 113) or may need files the unprivileged user cannot read (Python's own modules, when
the interpreter lives under ``/root``) happens first; then privileges are dropped; only
then are queries read.
"""

from __future__ import annotations

import asyncio

# Loaded before privileges are dropped: the interpreter's own files may not be readable by
# the unprivileged user (a Python under /root), and these load lazily otherwise.
import concurrent.futures.thread  # noqa: F401  (run_in_executor's pool)
import contextlib
import dataclasses
import encodings.idna  # noqa: F401  (getaddrinfo() of a str host: a restarted worker's probe)
import errno
import grp
import logging
import os
import pwd
import signal
import socket
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from aioidentd.daemon.claims_socket import ClaimsService, bind_claims_socket
from aioidentd.daemon.metrics import DaemonMetrics, bind_metrics
from aioidentd.daemon.nat import (
    ConntrackHelper,
    HelperKeeper,
    InProcess,
    NatResolver,
    start_helper,
)
from aioidentd.daemon.privileges import Identity, drop_privileges, stop_with_parent
from aioidentd.daemon.pseudonym_key import load_or_create_key
from aioidentd.daemon.refusals import check_startable, service_identity, unknown_accounts
from aioidentd.daemon.responder import KernelResponder
from aioidentd.daemon.sockets import acquire_sockets
from aioidentd.daemon.supervisor import supervise, unblock_forwarded
from aioidentd.errors import ActivationError, ConfigError, DaemonError, PrivilegeError
from aioidentd.lookup import SocketLookup, SocketLookupError, default_lookup
from aioidentd.policy import Config, DaemonSettings, Policy, load_config
from aioidentd.protocol import show_address
from aioidentd.server import IdentServer

__all__ = ["Daemon", "DaemonError"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class Daemon:
    """What ``aioidentd serve`` runs: the configuration plus how to start.

    ``overrides`` are the command line's ``[server]`` settings; they win over the file's
    on every (re)load. ``static`` is the fallback-only mode of ``--default``/``--random``
    (every query gets that answer, no lookup), like ``oidentd -R``.
    """

    config: Config
    config_path: str | None = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    default: str | None = None
    random: bool = False
    inetd: bool = False
    #: The claims socket, bound before privileges are dropped (``[server] claims_socket``).
    claims_sock: socket.socket | None = None
    #: Where ``[[nat]]`` translations come from (the privileged helper), if any.
    nat_source: ConntrackHelper | InProcess | None = None
    #: A worker: the signals the supervisor relays are blocked until serve() handles them.
    _signals_blocked: bool = dataclasses.field(default=False, init=False)
    #: The secret of ``answer = "pseudonym"``, read (or made) before privileges are dropped.
    pseudonym_key: bytes | None = None
    #: A worker process: what a reload finds is said once, by the supervisor.
    _worker: bool = dataclasses.field(default=False, init=False)

    @property
    def static(self) -> bool:
        return self.default is not None or self.random

    @classmethod
    def load(
        cls,
        config_path: str | None,
        overrides: dict[str, Any],
        base: DaemonSettings | None = None,
        **options: Any,
    ) -> Daemon:
        """Read the file (or start from ``base``/built-in defaults) and apply overrides.

        Raises :class:`ConfigError` with a ``file:line: message`` text, for a file that
        does not load and for one the daemon would refuse to start with (see
        :mod:`.refusals`, which ``check-config`` asks too); logs a warning for each table
        naming an account this host does not have.
        """
        config = load_config(config_path) if config_path is not None else Config()
        if config_path is None and base is not None:
            config = dataclasses.replace(config, daemon=base)
        config = _with_overrides(config, overrides)
        daemon = cls(config, config_path, overrides, **options)
        daemon._check(config)
        for warning in unknown_accounts(config):
            logger.warning("%s", warning)
        return daemon

    def _check(self, config: Config, inetd: bool | None = None) -> None:
        """The one set of start rules (:func:`.refusals.check_startable`), for how this
        daemon is started."""
        check_startable(
            config,
            inetd=self.inetd if inetd is None else inetd,
            static=self.static,
            flags=self.overrides,
        )

    # -- start-up --------------------------------------------------------------------------

    def run(self) -> int:
        """Bind, drop privileges, serve until SIGTERM/SIGINT; returns the exit status."""
        settings = self.config.daemon
        # SIGUSR1 asks for the counters; until the loop answers it, it must not kill us.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        try:
            socks, connected = acquire_sockets(settings, inetd=self.inetd)
        except OSError as exc:
            raise DaemonError(_bind_failure(exc, settings.port)) from None
        except ActivationError as exc:
            raise DaemonError(str(exc)) from None
        # Again, now that the sockets say whether this is one connection (Accept=yes).
        self._check(self.config, inetd=self.inetd or connected is not None)
        identity = self._identity()
        self._load_pseudonym_key(identity)
        if settings.claims_socket is not None and not self.static and connected is None:
            try:
                self.claims_sock = bind_claims_socket(settings.claims_socket)
            except OSError as exc:
                raise DaemonError(
                    f"cannot listen on the claims socket {settings.claims_socket}: "
                    f"{exc.strerror or exc}"
                ) from None
        self._loop_factory()  # imports uvloop, if asked for, while the files are readable
        workers = settings.workers if not connected else 1
        metrics_sock = self._metrics_socket()
        if workers > 1:
            per = len(socks) // workers
            groups = [socks[i * per : (i + 1) * per] for i in range(workers)]

            nat = self._start_nat(identity, socks, workers)
            supervisor = os.getpid()

            def work(index: int, group: Sequence[socket.socket]) -> int:
                self._worker = True
                lookup = None if self.static else self._lookup()
                self._nat_client(nat, index)
                self._drop(identity)
                if not stop_with_parent(supervisor):
                    return 0  # the supervisor died meanwhile
                return self._run_loop(self.serve(list(group), None, lookup))

            def drop_in_supervisor() -> None:
                self._drop(identity)
                self._check_reloadable()  # once, not once per worker

            def reload_in_supervisor() -> bool:
                # What a worker forked from now on runs (a replacement must not undo a
                # reload); a failure is said once here, and the workers are not asked.
                return self._reload(None, quiet=True)

            self._signals_blocked = True  # in each worker, until its loop handles them
            try:
                return supervise(groups, work, drop_in_supervisor, reload_in_supervisor)
            finally:
                if nat is not None:
                    nat.close()
        lookup = None if self.static else self._lookup()
        nat = self._start_nat(identity, [*socks, *([metrics_sock] if metrics_sock else [])], 1)
        self._nat_client(nat, 0)
        self._drop(identity)
        self._check_reloadable()
        try:
            return self._run_loop(self.serve(socks, connected, lookup, metrics_sock))
        finally:
            if self.nat_source is not None:
                self.nat_source.close()
            if nat is not None:
                nat.close()

    def _metrics_socket(self) -> socket.socket | None:
        """The ``[metrics] listen`` socket, bound with the ident port (before privileges
        are dropped); where ``[metrics]`` cannot work, _check() refused to start."""
        metrics = self.config.metrics
        if metrics.listen is None:
            return None
        try:
            return bind_metrics(metrics.listen)
        except OSError as exc:
            raise DaemonError(
                f"[metrics] listen = {metrics.listen!r}: {exc.strerror or exc}"
            ) from None

    def _start_nat(
        self, identity: Identity | None, socks: Sequence[socket.socket], workers: int
    ) -> HelperKeeper | None:
        """``[[nat]]`` needs conntrack, and conntrack CAP_NET_ADMIN: one keeper for every
        worker, forked now, before privileges are dropped, keeps that capability alone
        and the helper running (see nat.py). Without a drop to come, conntrack is asked
        in-process."""
        if not self.config.nat or self.static:
            return None
        if identity is None:
            self.nat_source = InProcess()  # not dropping privileges: ask the kernel here
            return None
        close = [*socks, *([self.claims_sock] if self.claims_sock is not None else [])]
        try:
            return start_helper(identity.uid, identity.gid, workers, close=close)
        except OSError as exc:
            raise DaemonError(f"cannot start the conntrack helper: {exc}") from None

    def _nat_client(self, nat: HelperKeeper | None, index: int) -> None:
        """In worker ``index`` (or the one process): its channel to the helper."""
        if nat is not None:
            self.nat_source = nat.client(index)

    def _load_pseudonym_key(self, identity: Identity | None) -> None:
        """The key of ``answer = "pseudonym"``, made on first start: as root, given to the
        daemon's user (who must read it again at a reload); never logged."""
        if not self.config.uses_pseudonyms or self.static:
            return
        path = self.config.pseudonym.key_file
        owner = None if identity is None else (identity.uid, identity.gid)
        self.pseudonym_key, created = load_or_create_key(path, owner)
        if created:
            logger.info("created a new pseudonym key in %s", path)

    def _identity(self) -> Identity | None:
        """Whom to become after binding (None when not root); refusals are
        :mod:`.refusals`' (a missing user, root without allow_root)."""
        return service_identity(self.config, flags=self.overrides)

    def _drop(self, identity: Identity | None) -> None:
        if identity is None:
            return
        try:
            drop_privileges(identity, allow_root=self.config.daemon.allow_root)
        except (PrivilegeError, OSError) as exc:
            raise DaemonError(f"cannot drop privileges: {exc}") from None

    def _check_reloadable(self) -> None:
        """Warn at start when SIGHUP will not be able to read the configuration file.

        The file is read again as the unprivileged user, so it must be readable by that
        user (``chgrp aioidentd; chmod 640`` keeps it private from everyone else). Not
        re-opened before the drop and kept open instead: editors, ``sed -i`` and
        configuration managers replace a file by renaming a new one over it, and a kept
        descriptor would go on reading the old file while saying "reloaded"; a failure
        that is said at start, and again at each SIGHUP, is better than a silent one.
        """
        if self.config_path is None:
            return
        try:
            with open(self.config_path, "rb"):
                pass
        except OSError as exc:
            logger.warning(
                "SIGHUP will not be able to re-read %s (%s) %s",
                self.config_path,
                exc.strerror or exc,
                _readable_hint(self.config_path),
            )

    def _lookup(self) -> SocketLookup:
        try:
            return default_lookup()
        except (SocketLookupError, OSError) as exc:
            raise DaemonError(f"no way to look up connections: {exc}") from None

    # -- serving -----------------------------------------------------------------------------

    def _loop_factory(self) -> Callable[[], asyncio.AbstractEventLoop] | None:
        if not self.config.daemon.uvloop:
            return None
        try:
            import uvloop
        except ImportError:
            raise DaemonError("uvloop is not installed (pip install 'aioidentd[uvloop]')") from None
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory

    def _run_loop(self, main: Coroutine[Any, Any, int]) -> int:
        with asyncio.Runner(loop_factory=self._loop_factory()) as runner:
            return runner.run(main)

    def _make_server(
        self, socks: list[socket.socket], lookup: SocketLookup | None
    ) -> tuple[IdentServer, KernelResponder | None]:
        settings = self.config.daemon
        handlers = []
        responder = None
        if lookup is not None:
            responder = KernelResponder(
                lookup,
                Policy(self.config, pseudonym_key=self.pseudonym_key),
                log_queries=settings.log_queries,
                forward_timeout=settings.forward_timeout,
            )
            handlers.append(responder)
            if self.nat_source is not None:
                resolver_of = responder
                responder.nat = NatResolver(self.nat_source, lambda: resolver_of.policy)
        ident = IdentServer(
            None,
            0,
            sock=socks,
            multiple=settings.multiple,
            idle_timeout=settings.idle_timeout,
            first_query_timeout=settings.first_query_timeout,
            defer_accept=settings.defer_accept,
            response_timeout=settings.response_timeout,
            reply_style=settings.reply_style,
            max_connections=settings.max_connections,
            default=self.default,
            random=self.random,
            handlers=handlers,
            name="aioidentd",
            trusted_proxies=[str(network) for network in settings.trusted_proxies],
        )
        return ident, responder

    async def serve(
        self,
        socks: list[socket.socket],
        connected: socket.socket | None,
        lookup: SocketLookup | None,
        metrics_sock: socket.socket | None = None,
    ) -> int:
        """Serve ``socks`` (or the one ``connected`` socket) until SIGTERM or SIGINT, which
        answer what is still waiting before closing; SIGHUP reloads; SIGUSR1 logs the
        counters in one line. ``lookup`` is None in static mode; ``metrics_sock`` is the
        bound ``[metrics] listen`` socket."""
        loop = asyncio.get_running_loop()
        ident, responder = self._make_server(socks, lookup)
        decisions = responder.decisions if responder is not None else None
        metrics = DaemonMetrics(self.config.metrics, ident.stats, decisions, metrics_sock)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload, responder)
        loop.add_signal_handler(signal.SIGUSR1, lambda: logger.info("%s", metrics.summary()))
        if self._signals_blocked:
            unblock_forwarded()  # handled from here on; one sent meanwhile arrives now
        try:
            if connected is not None:
                serving = asyncio.ensure_future(ident.serve_connection(connected))
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                await ident.close()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
                return 0
            await ident.start()
            await metrics.start()
            if responder is not None and self.claims_sock is not None:
                service = ClaimsService(responder.lookup, lambda: responder.policy)
                await service.start(self.claims_sock)
                responder.claims = service
                logger.info("claims socket on %s", self.config.daemon.claims_socket)
            where = ", ".join(show_address(address) for address in ident.addresses)
            mode = "static answers" if self.static else "kernel lookups"
            engine = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
            logger.info("serving ident on %s (%s, %s)", where, mode, engine)
            await stop.wait()
            logger.info("shutting down")
            if responder is not None and responder.claims is not None:
                await responder.claims.close()
            await ident.close()
            return 0
        finally:
            await metrics.close()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                loop.remove_signal_handler(signum)
            # Removing the handler restored the default action, which for SIGUSR1 is to
            # die: a request for the counters while the daemon finishes must not kill it.
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
            if responder is not None:
                responder.close()
            if lookup is not None and hasattr(lookup, "close"):
                lookup.close()

    def _reload(self, responder: KernelResponder | None, quiet: bool = False) -> bool:
        """SIGHUP: read the file again; a bad file is logged and the old policy stays.
        Returns whether the file was loaded; ``quiet`` logs only a failure (the
        supervisor's reload, which the workers' own reloads then report)."""
        if self.config_path is None:
            logger.info("SIGHUP: no configuration file to reload")
            return False
        try:
            fresh = _with_overrides(load_config(self.config_path), self.overrides)
            # What the next restart would refuse is refused now, not said "reloaded".
            self._check(fresh)
        except ConfigError as exc:
            hint = ""
            if not os.access(self.config_path, os.R_OK):
                hint = " " + _readable_hint(self.config_path)
            logger.warning("SIGHUP: keeping the running configuration: %s%s", exc, hint)
            return False
        key = self.pseudonym_key
        if fresh.uses_pseudonyms and (
            key is None or fresh.pseudonym.key_file != self.config.pseudonym.key_file
        ):
            try:
                key, created = load_or_create_key(fresh.pseudonym.key_file)
            except DaemonError as exc:
                logger.warning("SIGHUP: keeping the running configuration: %s", exc)
                return False
            if created:
                logger.info("created a new pseudonym key in %s", fresh.pseudonym.key_file)
        self.pseudonym_key = key
        if not self._worker:
            for warning in unknown_accounts(fresh):
                logger.warning("SIGHUP: %s", warning)
        if responder is not None:
            responder.policy = Policy(fresh, pseudonym_key=key)
            responder.log_queries = fresh.daemon.log_queries
        old = self.config.daemon
        live = ("log_queries",)
        changed = [
            f"[server] {f.name}"
            for f in dataclasses.fields(old)
            if f.name not in live and getattr(old, f.name) != getattr(fresh.daemon, f.name)
        ]
        if fresh.metrics != self.config.metrics:
            changed.append("[metrics]")
        # [server] and [metrics] stay as started: sockets and limits are fixed until a
        # restart.
        self.config = dataclasses.replace(fresh, daemon=old, metrics=self.config.metrics)
        if quiet:
            return True
        if changed:
            logger.warning(
                "SIGHUP: %s changed; that takes effect after a restart",
                ", ".join(changed),
            )
        logger.info("SIGHUP: configuration reloaded from %s", self.config_path)
        return True


def _bind_failure(exc: OSError, port: int) -> str:
    """Why the ident port could not be bound; for the privilege a port below 1024 needs,
    the ways to have it (a bare "Permission denied" names none of them)."""
    message = exc.strerror or str(exc)
    if exc.errno != errno.EACCES:
        return message
    return (
        f"{message}: port {port} needs privilege; start the daemon from systemd's "
        f"aioidentd.socket (which binds the port for it), or as root (it drops privileges "
        f"once bound), or give it the capability CAP_NET_BIND_SERVICE, or serve a high "
        f"port (--port 1113) and redirect {port} to it"
    )


def _readable_hint(path: str) -> str:
    """How to let this process's user read ``path``, naming that user and group."""
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"uid {os.geteuid()}"
    try:
        group = grp.getgrgid(os.getegid()).gr_name
    except KeyError:
        group = str(os.getegid())
    return (
        f"as {user}: make it readable by that user (chgrp {group} {path} && chmod 640 "
        f"{path}), or restart the daemon to apply changes"
    )


def _with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    if not overrides:
        return config
    return dataclasses.replace(config, daemon=dataclasses.replace(config.daemon, **overrides))
