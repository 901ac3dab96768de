"""Answers from the kernel's socket table, through the policy: the handler behind the host
identd, and usable by any embedding application that wants real answers for some queries.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable

from aioidentd._ratelimit import RateLimitedLog
from aioidentd.daemon.forward import Forwarder
from aioidentd.lookup import SocketLookup, SocketLookupError
from aioidentd.policy import Decision, Policy
from aioidentd.protocol import Address
from aioidentd.server import IdentRequest

__all__ = ["KernelResponder"]

logger = logging.getLogger(__name__)


class KernelResponder:
    """An :class:`IdentServer` handler that answers from the kernel's socket table.

    The queried connection is named by the RFC's rule: our end is the address the query
    arrived on with the queried server port, the other end is the querier's own address
    with the client port. So a host can only ask about its own connections to us.

    ``decisions`` counts the answers by the decision's kind (the policy's answer kinds,
    ``user-reply``, ``forward``, ``no-socket``, ``lookup-failed``), for the metrics.
    """

    def __init__(
        self,
        lookup: SocketLookup,
        policy: Policy,
        *,
        log_queries: bool = False,
        forward_timeout: float = 0.5,
    ):
        self.lookup = lookup
        self.policy = policy
        self.log_queries = log_queries
        self.forwarder = Forwarder(lookup, forward_timeout)
        self.decisions: Counter[str] = Counter()
        self._failures: RateLimitedLog | None = None

    def __call__(self, request: IdentRequest) -> Awaitable[None] | None:
        local = (request.local[0], request.server_port)
        remote = (request.peer[0], request.client_port)
        if self.lookup.blocking or self.policy.reads_files:
            # /proc scans and users' reply files may block: off the event loop.
            return self._answer_off_loop(request, local, remote)
        decision = self.decide(local, remote)
        if decision.forward is not None:
            return self._forward(request, decision)
        self._send(request, decision)
        return None

    async def _answer_off_loop(
        self, request: IdentRequest, local: Address, remote: Address
    ) -> None:
        loop = asyncio.get_running_loop()
        decision = await loop.run_in_executor(None, self.decide, local, remote)
        if decision.forward is not None:
            await self._forward(request, decision)
            return
        self._send(request, decision)

    async def _forward(self, request: IdentRequest, own: Decision) -> None:
        """Ask the user's identd; its answer if usable, else ``own`` (in time)."""
        assert own.forward is not None
        budget = request.deadline - asyncio.get_running_loop().time()
        reply, failure = await self.forwarder.ask(
            own.forward,
            own.uid,
            request.server_port,
            request.client_port,
            request.peer,
            request.local,
            budget,
        )
        self._send(request, self.policy.forwarded(own, reply, failure))

    def decide(self, local: Address, remote: Address, *, explain: bool = False) -> Decision:
        """The lookup, then the policy's decision: what the daemon answers for the
        connection ``local`` <-> ``remote`` (before any forward), and, ``explain`` set,
        what ``aioidentd explain`` shows (every reason). May block when the lookup or the
        policy does (see ``__call__``)."""
        try:
            uid = self.lookup.owner(local, remote)
        except (SocketLookupError, ValueError) as exc:
            return self.policy.lookup_failed(local, remote, str(exc))
        return self.policy.decide(uid, local, remote, explain=explain)

    def _send(self, request: IdentRequest, decision: Decision) -> None:
        self.decisions[decision.kind] += 1
        request.answer(decision.reply(request.server_port, request.client_port))
        if decision.kind == "lookup-failed":
            # Anyone can make us look up: one line per interval, then a count.
            if self._failures is None:
                loop = asyncio.get_running_loop()
                self._failures = RateLimitedLog(logger, call_later=loop.call_later)
            self._failures.log(
                "lookup-failed", logging.WARNING, "lookups failed", "%s", decision.reasons[0]
            )
        if self.log_queries or decision.spoofed or decision.forward is not None:
            # Spoofed answers are always logged with the real user, for abuse handling.
            peer, server_port, client_port = request.peer, request.server_port, request.client_port
            logger.info(
                "%s:%d asked %d,%d: %s",
                *peer,
                server_port,
                client_port,
                decision.describe(),
                extra={
                    "event": "query",
                    "peer": f"{peer[0]}:{peer[1]}",
                    "ports": [server_port, client_port],
                    "uid": decision.uid,
                    "answer": str(decision.reply(server_port, client_port)),
                    "reason": decision.why,
                },
            )
