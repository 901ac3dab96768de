"""Answers from the kernel's socket table, through the policy: the handler behind the host
identd, and usable by any embedding application that wants real answers for some queries.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable
from dataclasses import replace

from aioidentd._ratelimit import RateLimitedLog
from aioidentd.daemon.claims_socket import ClaimsService, HostClaim
from aioidentd.daemon.forward import MARGIN, Forwarder
from aioidentd.daemon.nat import NatResolver
from aioidentd.lookup import SocketLookup, SocketLookupError
from aioidentd.policy import Decision, Policy
from aioidentd.policy.decision import NAT_FORWARD_NOT_USED
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

    What anyone can make happen on every query is logged at a bounded rate
    (:class:`~aioidentd._ratelimit.RateLimitedLog`: the first line in full, then a count
    per interval): failed lookups, and per local user why their reply file was not used
    and the spoofed answers (fixed, random, their own reply, a forwarded one) with the
    real user. ``log_queries`` logs every query in full instead, as the administrator
    asked. :meth:`close` writes the counts still owed.
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
        #: Claims made over the daemon's claims socket (None: no such socket).
        self.claims: ClaimsService | None = None
        #: Connections this host translates for inner machines (None: no [[nat]]).
        self.nat: NatResolver | None = None
        self._limited: RateLimitedLog | None = None

    def _log(self) -> RateLimitedLog:
        """The rate-limited log, made on the event loop the first time it is needed (its
        summaries are timers on that loop)."""
        if self._limited is None:
            self._limited = RateLimitedLog(logger, call_later=asyncio.get_running_loop().call_later)
        return self._limited

    def close(self) -> None:
        """Write the counts of lines still owed (at shutdown)."""
        if self._limited is not None:
            self._limited.close()

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
        await self._answer_later(request, decision, local, remote)

    def _later(self, decision: Decision, remote: Address) -> bool:
        """Whether the answer takes time: a forward, a claim on its way, a NAT lookup."""
        return (
            decision.forward is not None
            or (self.nat is not None and decision.kind == "no-socket")
            or self._expecting(decision, remote)
        )

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
        """The answer once decided, with what takes time: the connection's claim, a NAT
        lookup, a forward. The decision may be stale (taken in a thread, or before this
        task ran): a claim made since answers, even once its owner has said "connected",
        and one on its way is waited for while the owner says it is connecting."""
        loop = asyncio.get_running_loop()
        uid = decision.uid
        claims = self.claims
        if claims is not None and uid is not None and decision.kind != "claim":
            coming = claims.expecting(uid, remote[0])
            budget = request.deadline - loop.time() - MARGIN if coming else 0.0
            claim = await claims.wait_for(local, remote, uid, budget)
            if claim is not None:
                decision = self._claimed(uid, local, remote, claim)
        if self.nat is not None and decision.kind == "no-socket":
            decision = await self._translated(request, local, remote, decision)
        if decision.forward is not None:
            await self._forward(request, decision)
            return
        self._send(request, decision)

    async def _translated(
        self, request: IdentRequest, local: Address, remote: Address, none: Decision
    ) -> Decision:
        """No local socket: maybe a connection this host translates for an inner machine
        (``[[nat]]``, see :mod:`.nat`); ``none`` (NO-USER) otherwise."""
        nat = self.nat
        assert nat is not None
        try:
            translation = await nat.translate(local, remote)
        except (SocketLookupError, ValueError) as exc:
            # Like a failed socket lookup: nobody knows whose connection it is, so
            # UNKNOWN-ERROR, logged at a bounded rate (see _send).
            return self.policy.lookup_failed(local, remote, f"conntrack: {exc}")
        if translation is None:
            return none
        rules = nat.rules_for(translation.inner[0])
        if not rules:
            return none
        first = rules[0]
        if first.answer != "forward":
            return nat.static(rules, translation)
        target = nat.forward_target(first, translation)
        loop = asyncio.get_running_loop()
        reply, failure = await self.forwarder.ask(
            target,
            None,
            translation.inner[1],
            translation.server[1],
            (translation.server[0], request.peer[1]),
            (translation.inner[0], first.forward_port),
            request.deadline - loop.time(),
        )
        if reply is not None:
            decision, failure = nat.relayed(first, translation, reply)
            if decision is not None:
                return decision
        fallback = nat.static(rules[1:], translation)
        return replace(fallback, note=f"{NAT_FORWARD_NOT_USED}{target}: {failure}")

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
        reply = decision.reply(request.server_port, request.client_port)
        request.answer(reply)
        if decision.kind == "lookup-failed":
            # Anyone can make us look up: one line per interval, then a count.
            self._log().log(
                "lookup-failed", logging.WARNING, "lookups failed", "%s", decision.reasons[0]
            )
        if decision.note is not None and decision.refused_file:
            # A local user can make every query refuse their file: per user, bounded.
            who = decision.who
            self._log().log(
                ("reply file", decision.uid),
                decision.note_level,
                f"'reply file not used' lines for {who}",
                "not using the reply file of %s: %s",
                who,
                decision.note,
            )
        if not (self.log_queries or decision.spoofed or decision.forward is not None):
            return
        # Spoofed answers are always logged with the real user, for abuse handling.
        peer, server_port, client_port = request.peer, request.server_port, request.client_port
        args = (*peer, server_port, client_port, decision.describe())
        extra = {
            "event": "query",
            "peer": f"{peer[0]}:{peer[1]}",
            "ports": [server_port, client_port],
            "uid": decision.uid,
            "answer": str(reply),
            "reason": decision.why,
        }
        if self.log_queries:
            logger.info("%s:%d asked %d,%d: %s", *args, extra=extra)
        else:
            # The user can ask as often as they like: per user, bounded.
            self._log().log(
                ("spoofed", decision.uid),
                logging.INFO,
                f"spoofed-answer lines for {decision.who}",
                "%s:%d asked %d,%d: %s",
                *args,
                extra=extra,
            )
