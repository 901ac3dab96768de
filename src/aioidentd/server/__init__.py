"""The embeddable ident server: :class:`IdentServer`, the :class:`IdentRequest` a handler
answers, and the :data:`Handler` type.

Inside, one room each: :mod:`~aioidentd.server.conn` (the sans-IO connection, all of its
state), :mod:`~aioidentd.server.answers` (the request and its one way back) and
:mod:`~aioidentd.server.server` (the facade over :mod:`aioidentd.driver`).
"""

from aioidentd.server.answers import Handler, IdentRequest
from aioidentd.server.server import IdentServer

__all__ = ["Handler", "IdentRequest", "IdentServer"]
