"""The explain trail: every step of a decision in words, or nothing at all.

``aioidentd explain`` and ``--explain`` want each step (which tables applied, which rules
did not match and why); the daemon answering queries wants none of it, at no cost. The
code that decides says every step to a :class:`Trail` either way: the default one
(:data:`SILENT`) does nothing with it, not even the formatting (arguments are
``%``-formatted only when recorded, as :mod:`logging` does), and :class:`Recording`
keeps the lines. So the story that ``explain`` tells is written by the code that decides,
as it decides, with no ``if explain`` beside each step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["SILENT", "Recording", "Trail"]


class Trail:
    """A trail that records nothing: the default, for queries nobody asked to explain."""

    __slots__ = ()

    def add(self, text: str, *args: object) -> None:
        """One step: ``text``, ``%``-formatted with ``args`` when there are any."""

    def extend(self, steps: Callable[..., Iterable[str]], *args: object) -> None:
        """The steps ``steps(*args)`` yields, computed only by a recording trail."""

    @property
    def lines(self) -> tuple[str, ...]:
        """The steps so far, in order."""
        return ()


class Recording(Trail):
    """A trail that keeps every step (``decide(..., explain=True)``)."""

    __slots__ = ("_lines",)

    def __init__(self, *first: str) -> None:
        self._lines = list(first)

    def add(self, text: str, *args: object) -> None:
        self._lines.append(text % args if args else text)

    def extend(self, steps: Callable[..., Iterable[str]], *args: object) -> None:
        self._lines.extend(steps(*args))

    @property
    def lines(self) -> tuple[str, ...]:
        return tuple(self._lines)


#: The trail of every decision nobody asked to explain.
SILENT = Trail()
