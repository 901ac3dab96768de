"""The daemon's counters as Prometheus sees them: the text format (checked with the
reference parser of ``prometheus_client``), the ``[metrics] listen`` endpoint against
well-behaved and hostile HTTP clients, the textfile, the SIGUSR1 line, and counters that
equal what the test clients did."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aioidentd import IdentRequest, IdentServer
from aioidentd.daemon import metrics as metrics_module
from aioidentd.daemon.metrics import MetricsEndpoint, bind_metrics, summary
from aioidentd.policy.settings import SERVICE_USER
from aioidentd.prometheus import render
from aioidentd.stats import LATENCY_BOUNDS
from peers import unavailable
from support import (
    ask,
    both_loops,
    require_ipv6,
    run_aioidentd,
    serve_process,
    wait_until,
    wait_until_async,
)


def parse(text: str) -> dict[str, float]:
    """Every sample as ``name{label="v",...}`` -> value, through the reference parser
    (which raises on anything that is not valid exposition format)."""
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        unavailable("prometheus_client is not installed (the 'test' extra)")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def http_get(port: int, request: bytes) -> bytes:
    """Send ``request`` as is and return everything the endpoint writes until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def body_of(response: bytes) -> str:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
    return body.decode()


# ---------------------------------------------------------------- the format, in process


async def test_rendered_counters_equal_what_the_clients_did() -> None:
    def handler(request: IdentRequest) -> None:
        if request.server_port == 1:
            request.reply("UNIX", "alice")
        elif request.server_port == 2:
            request.error("NO-USER")

    server = IdentServer(
        "127.0.0.1", 0, handlers=[handler], multiple=True, response_timeout=0.05, default="fb"
    )
    async with server:
        port = server.addresses[0][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"1,9\r\n2,9\r\n1,9\r\n3,9\r\nnot a query\r\n")
        for _ in range(5):
            await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        await wait_until_async(lambda: server.stats.connections_open == 0)
        samples = parse(render(server.stats, decisions={"username": 2, "no-socket": 1}))
    assert samples["aioidentd_queries_total"] == 4
    assert samples["aioidentd_invalid_lines_total"] == 1
    assert samples['aioidentd_answers_total{kind="userid"}'] == 2
    assert samples['aioidentd_answers_total{kind="error"}'] == 1
    assert samples['aioidentd_answers_total{kind="fallback"}'] == 1
    assert samples['aioidentd_answers_total{kind="claim"}'] == 0
    assert samples["aioidentd_connections_accepted_total"] == 1
    assert samples["aioidentd_connections_open"] == 0
    # The histogram: cumulative buckets at the stats' bounds, +Inf equal to the count.
    assert samples["aioidentd_answer_latency_seconds_count"] == 4
    assert samples['aioidentd_answer_latency_seconds_bucket{le="+Inf"}'] == 4
    bounds = [b for b in LATENCY_BOUNDS]
    counts = [samples[f'aioidentd_answer_latency_seconds_bucket{{le="{b!r}"}}'] for b in bounds]
    assert counts == sorted(counts) and counts[-1] <= 4
    assert samples["aioidentd_answer_latency_seconds_sum"] > 0
    assert samples['aioidentd_decisions_total{kind="no-socket"}'] == 1
    assert samples["aioidentd_lookup_failures_total"] == 0
    line = summary(server.stats, {"username": 2})
    assert line.startswith("stats: 4 queries, 1 invalid lines; answers: 0 claimed, 2 USERID")
    assert line.endswith("; decisions: username 2")


# ------------------------------------------------------- the endpoint, hostile clients


@pytest.fixture
def quick_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "REQUEST_TIMEOUT", 0.3)


async def _endpoint() -> MetricsEndpoint:
    sock = socket.create_server(("127.0.0.1", 0))
    endpoint = MetricsEndpoint(sock, lambda: "# TYPE x counter\nx_total 1\n")
    await endpoint.start()
    return endpoint


async def _exchange(port: int, request: bytes) -> bytes:
    return await asyncio.to_thread(http_get, port, request)


@both_loops
async def test_only_get_metrics_is_served_and_bad_requests_get_a_status(
    quick_timeouts: None,
) -> None:
    endpoint = await _endpoint()
    port = endpoint.address[1]
    try:
        ok = await _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert parse(body_of(ok)) == {"x_total": 1.0}
        cases = [
            (b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", b"200 OK"),
            (b"GET / HTTP/1.1\r\n\r\n", b"404 Not Found"),
            (b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", b"405 Method Not Allowed"),
            (b"GET /metrics\r\n\r\n", b"400 Bad Request"),
            (b"\x00\xff garbage \r\n\r\n", b"400 Bad Request"),
            (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10000 + b"\r\n\r\n", b"431 "),
            (b"GET /metrics HTTP/1.1\r\n", b"408 Request Timeout"),  # never finishes
        ]
        for request, status in cases:
            response = await _exchange(port, request)
            assert response.startswith(b"HTTP/1.1 " + status), (request[:40], response[:80])
    finally:
        await endpoint.close()


@both_loops
async def test_a_full_house_of_half_requests_still_lets_a_scrape_in(
    quick_timeouts: None,
) -> None:
    endpoint = await _endpoint()
    port = endpoint.address[1]
    held = []
    try:
        for _ in range(metrics_module.MAX_CLIENTS):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
            held.append((reader, writer))
        await wait_until_async(lambda: endpoint.connections == metrics_module.MAX_CLIENTS)
        # One more is served: the connection silent longest makes room for it.
        ok = await _exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert body_of(ok).endswith("x_total 1\n")
        first_reader = held[0][0]
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(first_reader.read(), 5) == b""  # closed for it
        # The others get their 408 when their time is up, and the slots are free again.
        late = await asyncio.wait_for(held[-1][0].read(), 5)
        assert late.startswith(b"HTTP/1.1 408 Request Timeout"), late
        await wait_until_async(lambda: endpoint.connections == 0)
    finally:
        for _, writer in held:
            writer.close()
        await endpoint.close()


# ----------------------------------------------------------------------- the daemon


@pytest.fixture
def writable_dir() -> Iterator[Path]:
    """A directory the daemon can write after dropping to its own user (tmp_path is
    root's)."""
    path = Path(tempfile.mkdtemp(prefix="aioidentd-metrics-"))
    if os.geteuid() == 0:
        service = pwd.getpwnam(SERVICE_USER)
        os.chown(path, service.pw_uid, service.pw_gid)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_the_daemon_serves_its_counters_and_writes_the_textfile(
    tmp_path: Path, writable_dir: Path
) -> None:
    textfile = writable_dir / "aioidentd.prom"
    config = tmp_path / "aioidentd.toml"
    config.write_text(
        f'[metrics]\nlisten = "127.0.0.1:0"\ntextfile = "{textfile}"\ntextfile_interval = 0.2\n'
    )
    with serve_process("--config", str(config), "--host", "127.0.0.1", "--port", "0") as d:
        port = d.port
        metrics_port = int(d.wait_for(r"metrics on http://127\.0\.0\.1:(\d+)/metrics").group(1))
        answers = [ask(port, b"%d, %d\r\n" % (40000 + i, 6667)) for i in range(3)]
        assert all(a.endswith(b":ERROR:NO-USER\r\n") for a in answers), answers
        assert ask(port, b"bogus\r\n").endswith(b":ERROR:INVALID-PORT\r\n")

        def scraped() -> dict[str, float]:
            return parse(body_of(http_get(metrics_port, b"GET /metrics HTTP/1.1\r\n\r\n")))

        wait_until(lambda: scraped()["aioidentd_connections_open"] == 0)
        samples = scraped()
        assert samples["aioidentd_queries_total"] == 3
        assert samples["aioidentd_invalid_lines_total"] == 1
        assert samples['aioidentd_answers_total{kind="error"}'] == 3
        assert samples['aioidentd_decisions_total{kind="no-socket"}'] == 3
        assert samples["aioidentd_connections_accepted_total"] == 4
        assert samples["aioidentd_answer_latency_seconds_count"] == 3
        assert samples["aioidentd_start_time_seconds"] > 1.7e9

        def written() -> bool:
            try:
                return parse(textfile.read_text()).get("aioidentd_queries_total") == 3
            except FileNotFoundError:
                return False

        wait_until(written, what="the textfile with the three queries")
        assert os.listdir(writable_dir) == ["aioidentd.prom"]  # no temporary left behind
        d.proc.send_signal(signal.SIGUSR1)
        d.wait_for(r"stats: 3 queries, 1 invalid lines; answers: 0 claimed, 0 USERID, 3 ERROR")
        assert d.stop() == 0
    assert parse(textfile.read_text())["aioidentd_queries_total"] == 3


def test_metrics_where_they_cannot_work_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "aioidentd.toml"
    config.write_text('[metrics]\nlisten = "127.0.0.1:0"\n')
    proc = run_aioidentd(
        "serve", "--config", str(config), "--host", "127.0.0.1", "--port", "0", "--workers", "2"
    )
    assert proc.returncode == 2
    assert "[metrics] needs workers = 1" in proc.stderr
    config.write_text('[metrics]\nlisten = "localhost:9561"\n')
    proc = run_aioidentd("serve", "--config", str(config))
    assert proc.returncode == 2
    assert "aioidentd.toml:2: 'listen' in [metrics]: not an IP address: 'localhost'" in proc.stderr
    # The port is taken: a clear message, not a traceback.
    with socket.create_server(("127.0.0.1", 0)) as taken:
        config.write_text(f'[metrics]\nlisten = "127.0.0.1:{taken.getsockname()[1]}"\n')
        proc = run_aioidentd("serve", "--config", str(config), "--host", "127.0.0.1", "--port", "0")
    assert proc.returncode == 1 and "[metrics] listen" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_reload_keeps_the_metrics_as_started_and_says_so(writable_dir: Path) -> None:
    config = writable_dir / "aioidentd.toml"  # readable after privileges are dropped
    config.write_text('[metrics]\nlisten = "127.0.0.1:0"\n')
    with serve_process("--config", str(config), "--host", "127.0.0.1", "--port", "0") as d:
        metrics_port = int(d.wait_for(r"metrics on http://127\.0\.0\.1:(\d+)/metrics").group(1))
        config.write_text('[metrics]\nlisten = "127.0.0.1:1"\n')
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for(r"SIGHUP: \[metrics\] changed; that takes effect after a restart")
        d.wait_for(r"SIGHUP: configuration reloaded")
        response = http_get(metrics_port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert "aioidentd_queries_total 0" in body_of(response)
        assert d.stop() == 0


async def test_the_endpoint_listens_on_ipv6_too() -> None:
    require_ipv6()
    sock = bind_metrics("[::1]:0")
    endpoint = MetricsEndpoint(sock, lambda: "# TYPE x counter\nx_total 2\n")
    await endpoint.start()
    try:
        host, port = endpoint.address
        assert host == "::1"

        def get() -> bytes:
            with socket.create_connection(("::1", port), timeout=10) as client:
                client.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
                data = b""
                while chunk := client.recv(65536):
                    data += chunk
                return data

        assert parse(body_of(await asyncio.to_thread(get))) == {"x_total": 2.0}
    finally:
        await endpoint.close()
