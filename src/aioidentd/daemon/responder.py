"""Answers from the kernel's socket table, through the policy: the handler behind the host
identd, and usable by any embedding application that wants real answers for some queries.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable

from aioidentd._ratelimit import RateLimitedLog
from aioidentd.daemon.claims_socket import ClaimsService, HostClaim
from aioidentd.daemon.forward import MARGIN, Forwarder
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
    ``user-reply``, ``forward``, ``claim``, ``no-socket``, ``lookup-failed``), for the
    metrics.
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
        #: Claims made over the daemon's claims socket (None: no such socket).
        self.claims: ClaimsService | None = None

    def __call__(self, request: IdentRequest) -> Awaitable[None] | None:
        local = (request.local[0], request.server_port)
        remote = (request.peer[0], request.client_port)
        if self.lookup.blocking or self.policy.reads_files:
            # /proc scans and users' reply files may block: off the event loop.
            return self._answer_off_loop(request, local, remote)
        decision = self.decide(local, remote)
        if self._later(decision, remote):
            return self._answer_later(request, decision, local, remote)
        self._send(request, decision)
        return None

    async def _answer_off_loop(
        self, request: IdentRequest, local: Address, remote: Address
    ) -> None:
        loop = asyncio.get_running_loop()
        decision = await loop.run_in_executor(None, self.decide, local, remote)
        if self._later(decision, remote):
            await self._answer_later(request, decision, local, remote)
            return
        self._send(request, decision)

    def _later(self, decision: Decision, remote: Address) -> bool:
        """Whether the answer takes time: a forward, a claim on its way."""
        return decision.forward is not None or self._expecting(decision, remote)

    def _expecting(self, decision: Decision, remote: Address) -> bool:
        """Whether the owner said it is connecting to the querier and has not claimed
        this connection yet: its claim may be on its way (see ClaimsService.wait_for)."""
        claims = self.claims
        return (
            claims is not None
            and decision.uid is not None
            and decision.kind != "claim"
            and claims.expecting(decision.uid, remote[0])
        )

    async def _answer_later(
        self, request: IdentRequest, decision: Decision, local: Address, remote: Address
    ) -> None:
        """The answers that take time: a claim being made, a forward."""
        loop = asyncio.get_running_loop()
        uid = decision.uid
        if self.claims is not None and uid is not None and self._expecting(decision, remote):
            budget = request.deadline - loop.time() - MARGIN
            claim = await self.claims.wait_for(local, remote, uid, budget)
            if claim is not None:
                decision = self._claimed(uid, local, remote, claim)
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
        claims = self.claims
        if claims is not None and uid is not None and claims.active:
            claim = claims.find(local, remote, uid)
            if claim is not None:
                # The owner claimed it over the claims socket.
                return self._claimed(uid, local, remote, claim)
        return self.policy.decide(uid, local, remote, explain=explain)

    def _claimed(self, uid: int, local: Address, remote: Address, claim: HostClaim) -> Decision:
        return self.policy.claimed(
            uid, local, remote, claim.user_id, claim.opsys, claim.charset, claim.error
        )

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
