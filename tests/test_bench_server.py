"""``make bench`` measures what it says: every server in its line-up answers every query the
load generator checks, in every kind of traffic, and holds idle connections.

A short run of ``benchmarks/bench_server.py``'s own code (cases 1, 4 and 6 for a fraction of
a second, case 5 with a few connections): no figure is asserted (speed is judged in the
benchmark, not here), only that each server gave right answers and no errors, so that the
benchmark does not rot while the server changes under it. Twisted's column runs where the
``bench`` extra is installed (``make bench``); the test extra does not have it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

import peers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_server


def test_every_server_answers_every_checked_query(tmp_path: Path) -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        peers.unavailable("no C compiler: the benchmark builds its load generator")
    oidentd = peers.require(peers.OIDENTD, "oidentd")
    loadgen = bench_server.compile_c(bench_server.LOADGEN_SRC, tmp_path)
    lineup = bench_server.find_lineup(
        oidentd, bench_server.compile_c(bench_server.LIMITD_SRC, tmp_path)
    )
    assert {"ours", "ours+uvloop", "oidentd", "C limit"} <= set(lineup.columns)
    env = bench_server.server_env()
    cases = [c for c in bench_server.CASES if c.name in ("1", "4", "6.256")]
    assert [(c.mode, c.connections, c.depth) for c in cases] == [
        ("conn", 50, 1),
        ("keep", 20, 8),
        ("segment", 1, 256),
    ]

    load = bench_server.run_load(lineup, cases, env, loadgen, 1, 0.3, 0.1)

    expected = {(c.name, column) for c in cases for column in lineup.columns}
    # oidentd answers one query per connection: no kept-open cases
    assert set(load) == expected - {("4", "oidentd"), ("6.256", "oidentd")}
    for (case, column), result in load.items():
        assert result.ok > 0 and result.errors == 0, (case, column, result.error_text)

    memory = bench_server.run_memory(lineup, env, 1, 50)

    for column, (run,) in memory.items():
        assert run.held == 50 and run.accepted == 50 and run.errors == 0, column
        assert (run.answered is not None) == (column != "oidentd"), column


def test_the_fresh_connection_profile_compares_like_with_like(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/profile_fresh.py (issue 18's profile: user and kernel time apart, ours
    against the C limit, the daemon's lookups against its static answer) runs and checks
    every answer; a wrong one raises."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        peers.unavailable("no C compiler: the profile builds its load generator")
    if os.geteuid() != 0:
        peers.unavailable("the daemon's lookups are profiled as root (it drops to nobody)")
    import profile_fresh

    assert profile_fresh.main(["--rounds", "1", "--seconds", "0.3", "--lookups"]) == 0
    out = capsys.readouterr().out
    assert out.count("ours / C limit: total x") == 2, out
    assert "lookups / static: total x" in out, out
