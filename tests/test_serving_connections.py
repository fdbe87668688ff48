"""Slow, idle and numerous clients cannot hold the server (issue 38, item 3): against a live `latentdefence serve`
with short limits, over raw sockets, as an attacker would send them."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from guard_artifact import artifact  # noqa: F401 (shared fixtures)

from latentdefence.serving.connections import ConnectionLimits
from latentdefence.serving.process import start_server
from latentdefence.validation import InputValidationError

LIMIT_S = 1.0       # the server's head, body and keep-alive limits in these tests
CAP = 6             # its connection cap


@pytest.fixture(scope="module")
def server(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    folder = tmp_path_factory.mktemp("connections")
    proc, url = start_server(artifact, "--audit-db", str(folder / "audit.sqlite"), "--threads", "1",
                             "--header-timeout", str(LIMIT_S), "--body-timeout", str(LIMIT_S),
                             "--keep-alive", str(LIMIT_S), "--max-connections", str(CAP), log=folder / "server.log")
    try:
        yield url, int(url.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def _closed_after(sock: socket.socket, trickle: bytes = b"", every_s: float = 0.25, limit_s: float = 6.0) -> float:
    """Seconds until the server closes `sock` while we send `trickle` one byte every `every_s` (then nothing);
    fails after `limit_s`. Whatever the server answered is discarded."""
    start = time.monotonic()
    sock.settimeout(every_s)
    sent = 0
    while time.monotonic() - start < limit_s:
        if sent < len(trickle):
            try:
                sock.sendall(trickle[sent:sent + 1])
            except OSError:             # reset by the server: closed
                return time.monotonic() - start
            sent += 1
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - start
    pytest.fail(f"connection still open after {limit_s} s ({sent} bytes trickled)")


def test_a_request_head_sent_one_byte_at_a_time_is_cut_off(server: tuple[str, int]) -> None:
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Slow: " + b"a" * 200
    with _connect(server[1]) as sock:
        assert _closed_after(sock, head) < LIMIT_S + 2


def test_a_connection_that_sends_nothing_is_closed(server: tuple[str, int]) -> None:
    with _connect(server[1]) as sock:
        assert _closed_after(sock) < LIMIT_S + 2


def test_a_body_sent_one_byte_at_a_time_gets_a_408_naming_the_limit(server: tuple[str, int]) -> None:
    head = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000\r\n\r\n")
    with _connect(server[1]) as sock:
        sock.sendall(head)
        answer, start = b"", time.monotonic()
        sock.settimeout(0.25)
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            assert time.monotonic() - start < LIMIT_S + 4, answer
            try:
                sock.sendall(b"[")
                answer += sock.recv(65536)
            except TimeoutError:
                continue
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request body not received within 1 s" in answer and b"--body-timeout" in answer


def test_an_idle_kept_alive_connection_is_closed_and_so_is_a_slow_second_request(server: tuple[str, int]) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    for trickle in (b"", request[:-2]):
        with _connect(server[1]) as sock:
            sock.sendall(request)
            sock.settimeout(5)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            assert _closed_after(sock, trickle) < 2 * LIMIT_S + 2


def test_connections_beyond_the_cap_get_503_and_the_server_recovers(server: tuple[str, int]) -> None:
    url, port = server
    idle = [_connect(port) for _ in range(CAP)]
    try:
        time.sleep(0.2)
        with _connect(port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(5)
            assert sock.recv(65536).startswith(b"HTTP/1.1 503")
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 5
    while httpx.get(f"{url}/healthz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline


def test_three_hundred_slow_clients_are_all_cut_off_and_the_server_still_answers(server: tuple[str, int]) -> None:
    url, port = server
    socks = []
    for _ in range(300):
        try:
            socks.append(_connect(port))
        except OSError:                 # the listen backlog is full: also refused, not held
            break
    for sock in socks:
        try:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\n")
        except OSError:                 # already cut off while the others were connecting
            pass
    time.sleep(LIMIT_S + 1.5)
    still_open = 0
    for sock in socks:
        sock.settimeout(0.05)
        try:
            still_open += sock.recv(1) != b""
        except TimeoutError:
            still_open += 1
        except OSError:
            pass
        sock.close()
    assert still_open == 0
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("field, value", [("header_timeout_s", 0.0), ("body_timeout_s", float("inf")),
                                          ("keep_alive_s", -1.0), ("max_connections", 0), ("max_header_bytes", 0)])
def test_limits_out_of_range_are_refused_by_name(field: str, value: float) -> None:
    with pytest.raises(InputValidationError, match=field):
        ConnectionLimits(**{field: value})
