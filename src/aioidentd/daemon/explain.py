"""Why the daemon answers what it answers for one connection (``aioidentd explain``).

The answer itself comes from the daemon's own code: :meth:`KernelResponder.decide` (the
same lookup and the same :class:`~aioidentd.policy.Policy`), whose
:class:`~aioidentd.policy.Decision` carries the policy's reasons as it decided. What is
added here is what the daemon does not need to know while answering but an administrator
does: which connections are *near* one that was not found (the same local port to another
host, a TIME_WAIT remnant, another network namespace), whether the query could reach the
daemon and come from the right host, and what this command could not see.

As root the decision is made the way the daemon makes it: in a child process that has
dropped to the configured ``[server] user`` (so a user's reply file is read, or refused,
exactly as the daemon would), the lookup's socket opened before the drop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import pickle
import pwd
from collections.abc import Callable
from typing import Any

from aioidentd._printable import printable
from aioidentd.daemon.privileges import Identity, drop_privileges, resolve_identity
from aioidentd.daemon.responder import KernelResponder
from aioidentd.errors import PrivilegeError, SocketLookupError
from aioidentd.lookup import NetlinkLookup, ProcNetLookup, SocketLookup, default_lookup
from aioidentd.lookup.table import TableEntry, read_table
from aioidentd.policy import Config, Decision, Policy, UserDB
from aioidentd.protocol import Address, encode_reply, show_address, unmapped

__all__ = ["Explanation", "Step", "explain", "find_connections"]


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """One finding: ``topic`` (connection, query, lookup, policy, reply file, answer,
    privileges, hint) and the finding in words."""

    topic: str
    text: str


@dataclasses.dataclass(slots=True)
class Explanation:
    """What the daemon would answer for one connection, and every reason."""

    local: Address
    remote: Address
    querier: str
    steps: list[Step]
    decision: Decision
    #: The answer line as the daemon would write it (without CR LF).
    answer: str

    def as_json(self) -> dict[str, Any]:
        decision = self.decision
        return {
            "connection": {
                "local": {"address": self.local[0], "port": self.local[1]},
                "remote": {"address": self.remote[0], "port": self.remote[1]},
            },
            "querier": self.querier,
            "steps": [{"topic": step.topic, "text": step.text} for step in self.steps],
            "decision": {
                "kind": decision.kind,
                "source": decision.source,
                "uid": decision.uid,
                "user": decision.user_name,
                "error": decision.error,
                "unmasked_error": decision.unmasked_error,
                "reply_file_note": decision.note,
                "reasons": list(decision.reasons),
                "why": decision.why,
            },
            "answer": self.answer,
        }


def _same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(unmapped(a)) == ipaddress.ip_address(unmapped(b))
    except ValueError:
        return a == b


def _same(a: Address, b: Address) -> bool:
    return a[1] == b[1] and _same_host(a[0], b[0])


def _owner(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def find_connections(
    remote: Address, local_port: int | None, table: list[TableEntry] | None = None
) -> list[TableEntry]:
    """The live connections to ``remote`` (from ``local_port`` when given): what
    ``explain`` picks from when it is not told our end's address."""
    entries = read_table() if table is None else table
    return [
        entry
        for entry in entries
        if entry.state != 10
        and _same(entry.remote, remote)
        and (local_port is None or entry.local[1] == local_port)
    ]


def explain(
    config: Config,
    local: Address,
    remote: Address,
    *,
    querier: str | None = None,
    lookup: SocketLookup | None = None,
    user_db: UserDB | None = None,
    proc: str = "/proc",
    pseudonym_key: bytes | None = None,
) -> Explanation:
    """Explain the daemon's answer for ``local`` (this host) <-> ``remote`` when the
    query comes from ``querier`` (default: the remote host, as RFC 1413 intends).

    ``lookup`` defaults to the daemon's (:func:`default_lookup`), ``user_db`` to the
    system's passwd and group databases (see :class:`Policy`); ``pseudonym_key`` is
    needed when the configuration answers ``"pseudonym"``. Raises
    :class:`SocketLookupError` only when no lookup can be opened at all.
    """
    steps: list[Step] = []
    querier = remote[0] if querier is None else querier
    steps.extend(_reachability(config, local))
    asked_remote = remote
    if not _same_host(querier, remote[0]):
        asked_remote = (querier, remote[1])
        steps.append(
            Step(
                "query",
                f"a query from {querier} names the connection {show_address(local)} <-> "
                f"{show_address(asked_remote)}, not this one: only {remote[0]}, the other end, "
                f"can ask about it (RFC 1413: the querier's own address is the remote end)",
            )
        )
    if lookup is None:
        lookup = default_lookup()
    steps.append(Step("lookup", _backend(lookup)))
    responder = KernelResponder(
        lookup,
        Policy(config, user_db=user_db, pseudonym_key=pseudonym_key),
        forward_timeout=config.daemon.forward_timeout,
    )
    decision, privilege_steps = _decide(config, responder, local, asked_remote)
    steps.extend(privilege_steps)
    own = decision
    if decision.forward is not None:
        decision = _forwarded(config, responder, decision, local, asked_remote, querier)
        decision = dataclasses.replace(decision, reasons=own.reasons)
    if decision.kind == "lookup-failed":
        steps.append(Step("lookup", decision.reasons[0]))
    elif decision.uid is None:
        steps.extend(Step("connection", reason) for reason in decision.reasons[:1])
        steps.extend(_near_misses(local, asked_remote, proc))
    else:
        state = _state_of(local, asked_remote)
        found = f"found ({state})" if state else "found"
        steps.append(
            Step(
                "connection",
                f"{show_address(local)} <-> {show_address(asked_remote)}: {found}, "
                f"owner {_owner(decision.uid)}",
            )
        )
    for reason in own.reasons:
        if reason.startswith("owner:") or decision.kind == "lookup-failed":
            continue
        if reason.startswith("reply file"):
            steps.append(Step("reply file", reason.removeprefix("reply file ")))
        elif reason.startswith("oidentd file"):
            steps.append(Step("user file", reason))
        elif reason.startswith("no live connection"):
            continue  # shown with the connections near it
        else:
            steps.append(Step("policy", reason))
    if own.forward is not None:
        if decision.kind == "forward":
            steps.append(Step("forward", f"{own.forward} answered; its answer is relayed"))
        else:
            steps.append(Step("forward", f"not used: {decision.note}"))
    reply = decision.reply(local[1], asked_remote[1])
    line = encode_reply(reply, config.daemon.reply_style).rstrip(b"\r\n")
    answer = printable(line.decode("utf-8", "backslashreplace"))
    shown = f"{answer} ({decision.why})"
    steps.append(Step("answer", shown))
    return Explanation(local, remote, querier, steps, decision, answer)


def _forwarded(
    config: Config,
    responder: KernelResponder,
    own: Decision,
    local: Address,
    remote: Address,
    querier: str,
) -> Decision:
    """Ask the forward target as the daemon would (the same Forwarder, the same
    ``Policy.forwarded``), within the daemon's response deadline."""
    assert own.forward is not None
    settings = config.daemon
    reply, failure = asyncio.run(
        responder.forwarder.ask(
            own.forward,
            own.uid,
            local[1],
            remote[1],
            (querier, remote[1]),
            (local[0], settings.port),
            settings.response_timeout,
        )
    )
    return responder.policy.forwarded(own, reply, failure)


def _backend(lookup: SocketLookup) -> str:
    if isinstance(lookup, NetlinkLookup):
        return "the kernel's socket table through netlink sock_diag (as the daemon asks it)"
    if isinstance(lookup, ProcNetLookup):
        return (
            "the kernel's socket table through /proc/net/tcp and tcp6 (netlink sock_diag is "
            "not available here; the daemon falls back to the same)"
        )
    return f"{type(lookup).__name__}"


def _reachability(config: Config, local: Address) -> list[Step]:
    """Whether a query about this connection can reach the daemon at all."""
    settings = config.daemon
    if settings.listen is None or any(
        _same_host(host, local[0]) or host in ("0.0.0.0", "::") for host in settings.listen
    ):
        return []
    listening = ", ".join(settings.listen)
    return [
        Step(
            "query",
            f"the daemon listens on {listening} (port {settings.port}) only: a query sent to "
            f"{local[0]} does not reach it (the answer below is what it would say if it did)",
        )
    ]


def _state_of(local: Address, remote: Address) -> str | None:
    try:
        table = read_table()
    except OSError:
        return None
    for entry in table:
        if entry.owned and _same(entry.local, local) and _same(entry.remote, remote):
            return entry.state_name
    return None


def _decide(
    config: Config, responder: KernelResponder, local: Address, remote: Address
) -> tuple[Decision, list[Step]]:
    """The responder's decision as the daemon would make it: as root, in a child that
    dropped to the daemon's user first."""
    if os.geteuid() != 0:
        me = _owner(os.geteuid())
        user = config.daemon.user
        return responder.decide(local, remote, explain=True), [
            Step(
                "privileges",
                f"running as {me}, not root: users' reply files were read as {me}; the daemon "
                f"reads them as {user!r}, which may be refused where you are allowed; other "
                f"network namespaces cannot be searched",
            )
        ]
    try:
        identity = resolve_identity(config.daemon.user, config.daemon.group)
    except PrivilegeError as exc:
        return responder.decide(local, remote, explain=True), [
            Step("privileges", f"cannot become the daemon's user ({exc}): decided as root")
        ]
    if identity.uid == 0:
        return responder.decide(local, remote, explain=True), [
            Step("privileges", "the daemon's [server] user is root: decided as root")
        ]
    decision = _in_child(lambda: _decide_as(identity, config, responder, local, remote))
    return decision, [
        Step(
            "privileges",
            f"decided as the daemon does: as {identity.user}:{identity.group} "
            f"(uid {identity.uid}) after dropping root",
        )
    ]


def _decide_as(
    identity: Identity, config: Config, responder: KernelResponder, local: Address, remote: Address
) -> Decision:
    drop_privileges(identity, allow_root=config.daemon.allow_root)
    return responder.decide(local, remote, explain=True)


def _in_child(work: Callable[[], Decision]) -> Decision:
    """``work()`` in a forked child, its result sent back through a pipe: the child may
    drop privileges for good while this process keeps them (to search other network
    namespaces afterwards)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        status = 0
        try:
            os.close(read_end)
            try:
                result: object = work()
            except Exception as exc:
                result = f"{type(exc).__name__}: {exc}"
                status = 1
            data = pickle.dumps(result)
            with os.fdopen(write_end, "wb") as out:
                out.write(data)
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as source:
        data = source.read()
    os.waitpid(pid, 0)
    result = pickle.loads(data) if data else "the child process died"
    if isinstance(result, Decision):
        return result
    raise SocketLookupError(f"deciding as the daemon's user failed: {result}")


def _near_misses(local: Address, remote: Address, proc: str) -> list[Step]:
    """The connections nearest to one that was not found, and a hint when none is."""
    try:
        table = read_table(os.path.join(proc, "net"))
    except OSError as exc:
        return [Step("connection", f"cannot read the socket table to look further: {exc}")]
    steps: list[Step] = []
    exact = [e for e in table if _same(e.local, local) and _same(e.remote, remote)]
    for entry in exact:
        if not entry.owned:
            steps.append(
                Step(
                    "connection",
                    f"{show_address(local)} <-> {show_address(remote)} is {entry.state_name} "
                    f"with no owner: "
                    f"the connection is closed (or not yet accepted) and nobody owns it now",
                )
            )
    same_local = [
        e
        for e in table
        if e.owned and _same(e.local, local) and not _same(e.remote, remote) and e.remote[1]
    ]
    for entry in same_local[:5]:
        steps.append(
            Step(
                "connection",
                f"local port {local[1]} is connected to {show_address(entry.remote)} instead "
                f"({entry.state_name}, {_owner(entry.uid)}): a query about it must come from "
                f"{entry.remote[0]}",
            )
        )
    to_remote = [
        e for e in table if e.owned and _same(e.remote, remote) and not _same(e.local, local)
    ]
    for entry in to_remote[:5]:
        steps.append(
            Step(
                "connection",
                f"{show_address(remote)} is connected from local port {entry.local[1]} instead "
                f"({show_address(entry.local)}, {entry.state_name}, {_owner(entry.uid)}): were "
                f"the ports swapped or out of date?",
            )
        )
    if steps:
        return steps
    elsewhere = _other_namespaces(local, remote, proc)
    if elsewhere is not None:
        return elsewhere
    return [
        Step(
            "hint",
            f"nothing in this network namespace has local port {local[1]} or talks to "
            f"{show_address(remote)}: if the client runs in a container (docker, podman, a "
            f"netns), its connection lives in another network namespace, which this identd "
            f"does not see; run an identd inside it, or have it forward to one"
            + ("" if os.geteuid() == 0 else " (run explain as root to search them)"),
        )
    ]


def _other_namespaces(local: Address, remote: Address, proc: str) -> list[Step] | None:
    """As root: the connection in another network namespace (found through
    ``/proc/PID/net``, one process per namespace), or None."""
    if os.geteuid() != 0:
        return None
    try:
        ours = os.readlink(os.path.join(proc, "self", "ns", "net"))
        pids = [name for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return None
    seen = {ours}
    for pid in pids:
        try:
            namespace = os.readlink(os.path.join(proc, pid, "ns", "net"))
        except OSError:
            continue
        if namespace in seen:
            continue
        seen.add(namespace)
        try:
            table = read_table(os.path.join(proc, pid, "net"))
        except OSError:
            continue
        for entry in table:
            if entry.owned and _same(entry.local, local) and _same(entry.remote, remote):
                return [
                    Step(
                        "connection",
                        f"{show_address(local)} <-> {show_address(remote)} exists in another "
                        f"network namespace ({namespace}, that of pid {pid}), owned by "
                        f"{_owner(entry.uid)}: the daemon sees only its own namespace, so it "
                        f"answers NO-USER; run an identd inside that namespace, or have it "
                        f"forward to one",
                    )
                ]
    if len(seen) == 1:
        return None  # no other namespace on this host: the general hint
    return [
        Step(
            "hint",
            f"nothing in this network namespace has local port {local[1]} or talks to "
            f"{show_address(remote)}, and none of the {len(seen) - 1} other network namespaces "
            f"has this connection: are the addresses and ports right, is it still open?",
        )
    ]
