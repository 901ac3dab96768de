"""Runs ``async def`` tests on a fresh event loop, so the suite needs no plugin."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    funcargs: dict[str, Any] = pyfuncitem.funcargs
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: funcargs[name] for name in names}
    asyncio.run(asyncio.wait_for(pyfuncitem.obj(**kwargs), timeout=60))
    return True


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures that tests recorded (``record_property("figures", ...)``): the
    hostile-input suite's measurements belong in CI's output, not only in its verdicts."""
    lines = [
        str(value)
        for report in terminalreporter.stats.get("passed", [])
        + terminalreporter.stats.get("failed", [])
        for name, value in getattr(report, "user_properties", [])
        if name == "figures"
    ]
    if lines:
        terminalreporter.section("figures")
        for line in lines:
            terminalreporter.write_line(line)
