"""The suite's one way to run ``async def`` tests (a fresh event loop each, asyncio or,
for tests that use the ``loop_kind`` fixture, uvloop too), and the one rule for tests that
need something from outside (``needs_ipv6``/``needs_root`` marks: fail under CI, skip
elsewhere)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from peers import require_root, unavailable
from support import require_ipv6

#: How long any async test may run before it fails (a hang is a failure, not a stall).
ASYNC_TEST_LIMIT = 60


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_ipv6: the test needs IPv6 on loopback")
    config.addinivalue_line("markers", "needs_root: the test needs root")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("needs_root") is not None:
        require_root(item.nodeid)
    if item.get_closest_marker("needs_ipv6") is not None:
        require_ipv6()


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    """Run the (async) test on each event loop: asyncio's, and uvloop's, whose transports
    are not ``asyncio.Transport`` subclasses and whose accept path differs. Use it with
    ``@pytest.mark.usefixtures("loop_kind")``."""
    kind: str = request.param
    if kind == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            unavailable("uvloop is not installed (pip install -e '.[test]')")
    return kind


def _loop_factory(item: pytest.Function) -> Callable[[], asyncio.AbstractEventLoop] | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None or callspec.params.get("loop_kind") != "uvloop":
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    funcargs: dict[str, Any] = pyfuncitem.funcargs
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: funcargs[name] for name in names}
    factory = _loop_factory(pyfuncitem)
    with asyncio.Runner(loop_factory=factory) as runner:
        if factory is not None:
            assert type(runner.get_loop()).__module__.startswith("uvloop")
        runner.run(asyncio.wait_for(pyfuncitem.obj(**kwargs), timeout=ASYNC_TEST_LIMIT))
    return True


@pytest.fixture
def scenario(record_property: Any) -> Callable[..., dict[str, Any]]:
    """``scenario(table, name, **options)`` runs one scenario of a benchmark's table
    (``SCENARIOS`` of benchmarks/bench_hostile*.py) and records its figures, which the run's
    summary prints (below)."""

    def run(table: dict[str, Callable[..., dict[str, Any]]], name: str, **options: Any) -> Any:
        figures = table[name](**options)
        record_property("figures", f"{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
        return figures

    return run


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
