"""Hostile local users and scrapers against the daemon's claims socket and metrics endpoint.

Each test runs the quick form of a scenario of ``benchmarks/bench_hostile_local.py`` (the
code that prints the figures there) against a real ``aioidentd serve`` with attackers in
their own processes, and checks a threshold a user would notice. Each failed on the
hand-written claims socket and the asyncio-streams endpoint (figures from the same
scenarios then in the comments).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import pytest

from support import needs_root

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_hostile_local

pytestmark = needs_root  # the daemon binds as root and drops privileges, as in production


@pytest.fixture
def run(scenario: Any) -> Any:
    """Runs one scenario; its figures are printed in the run's summary (conftest)."""
    return functools.partial(scenario, bench_hostile_local.SCENARIOS)


def test_a_claims_socket_flood_does_not_delay_ident_answers(run: Any) -> None:
    # Before: 20 of 200 queries unanswered within 5 s, p99 past 5 s (one burst of 200 KiB
    # of newlines held every ident answer on the host for 1.5-4.9 s).
    figures = run("claimsflood", flooders=2, connections=8, queries=100)
    assert figures["unanswered"] == 0
    assert figures["late"] == 0
    assert figures["flood_p99_ms"] < figures["response_timeout_ms"]


def test_claims_clients_that_never_read_do_not_grow_the_daemon(run: Any) -> None:
    # Before: 11.4 MiB of RSS for 16 MiB of requests asking for 16 MiB of answers.
    figures = run("claimsmemory", connections=64, each_kib=256)
    assert figures["answer_mib_asked"] > 10  # the attack really asked for that much
    assert figures["daemon_alive"]
    assert figures["rss_growth_mib"] < 4


def test_undigestible_claims_lines_get_answers_and_no_tracebacks(run: Any) -> None:
    # Before: 50 "Fatal error" tracebacks (700 log lines) for 50 connections, and no
    # answer at all to any of their lines.
    figures = run("claimslog", connections=50)
    assert figures["tracebacks"] == 0 and figures["fatal_errors"] == 0
    assert figures["refusals_answered"] == figures["bad_lines"]
    assert figures["log_lines"] <= 4  # one per kind (and the first internal error's)
    assert figures["still_serving"]


def test_half_open_metrics_connections_do_not_keep_scrapes_out(run: Any) -> None:
    # Before: 0 of 40 scrapes served while 32 half-open requests were held.
    figures = run("metricsslots", holders=2, held=16, scrapes=30)
    assert figures["success_rate"] >= 0.95
    assert figures["log_lines"] <= 6  # evictions and timeouts: a line per kind per 10 s


def test_metrics_clients_that_never_read_do_not_grow_the_daemon(run: Any) -> None:
    figures = run("metricsmemory", connections=32)
    assert figures["sent_mib"] > 8
    assert figures["rss_growth_mib"] < 4
    assert figures["scrape_after"]
