"""Twisted's ident server answering every query with a fixed user: a peer for bench_server.py.

    python benchmarks/twisted_identd.py HOST PORT USER [BACKLOG]

``twisted.protocols.ident.IdentServer`` as shipped, on the epoll reactor, in a process of its
own. Two things are added, and nothing else is changed:

* a bytes/str shim: on Python 3 its ``LineOnlyReceiver`` hands ``lineReceived`` bytes and
  ``sendLine`` wants bytes, while ``IdentServer`` splits and formats str (it was written
  for Python 2), so each line is decoded on the way in and encoded on the way out;
* ``lookup`` returns ``('UNIX', USER)`` (the static answer every server in the benchmark
  gives), where the stock one raises IdentError for every query.

It answers ``S, C : USERID : UNIX : USER`` (spaced), keeps the connection open for further
queries, and has no limits or timers. Twisted is in the ``bench`` extra, not a dependency.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import epollreactor

epollreactor.install()  # type: ignore[no-untyped-call]

from twisted.internet import reactor as _reactor  # noqa: E402  (after the reactor is chosen)
from twisted.internet.protocol import Factory  # noqa: E402
from twisted.protocols.ident import IdentServer  # noqa: E402

# The module's reactor is typed as the last installed one cannot be: as it is used here.
reactor: Any = _reactor


class StaticIdentServer(IdentServer):
    """IdentServer with the str shim and a fixed answer."""

    user = "alice"

    def lineReceived(self, line: bytes) -> None:
        base: Any = super()  # untyped in Twisted
        base.lineReceived(line.decode("latin-1"))

    def sendLine(self, line: str) -> None:
        base: Any = super()
        base.sendLine(line.encode("latin-1"))

    def lookup(self, serverAddress: object, clientAddress: object) -> tuple[str, str]:
        return ("UNIX", self.user)


def main(argv: list[str]) -> None:
    if len(argv) not in (3, 4):
        sys.exit(f"usage: {sys.argv[0]} HOST PORT USER [BACKLOG]")
    host, port, user = argv[0], int(argv[1]), argv[2]
    backlog = int(argv[3]) if len(argv) == 4 else 50
    StaticIdentServer.user = user
    factory = Factory.forProtocol(StaticIdentServer)
    reactor.listenTCP(port, factory, backlog=backlog, interface=host)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
