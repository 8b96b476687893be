"""The separated-network guard (tests/offline.py): what it refuses, what it lets through."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.offline import Guard, OutboundConnectionBlocked, is_local_host

#: TEST-NET-3 (RFC 5737): documentation only, routed nowhere, so nothing leaves even if the guard failed.
NOWHERE = "203.0.113.1"
REPO = Path(__file__).resolve().parents[1]


def test_a_connect_to_a_public_address_raises_the_guards_error(outbound: Guard) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # without the guard this would be a timeout (an OSError, not the guard's error): the test fails
        sock.settimeout(0.5)
        with pytest.raises(OutboundConnectionBlocked, match=f"connect {NOWHERE}:80"):
            sock.connect((NOWHERE, 80))
        with pytest.raises(OutboundConnectionBlocked):
            sock.connect_ex((NOWHERE, 443))
    assert outbound.take() == [f"connect {NOWHERE}:80", f"connect {NOWHERE}:443"]


def test_name_lookups_and_clients_are_refused_too(outbound: Guard) -> None:
    with pytest.raises(OutboundConnectionBlocked):
        socket.getaddrinfo("pypi.org", 443)
    with pytest.raises(httpx.ConnectError, match="outbound connection blocked"):
        httpx.get(f"http://{NOWHERE}/", timeout=0.5)
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock, pytest.raises(OutboundConnectionBlocked):
        sock.connect(("2001:db8::1", 80))
    assert outbound.take() == ["name lookup pypi.org", f"connect {NOWHERE}:80", "connect 2001:db8::1:80"]


def test_loopback_and_unix_sockets_pass(tmp_path: Path, outbound: Guard) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        for host in ("127.0.0.1", "localhost"):
            with socket.create_connection((host, port)):
                pass
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(tmp_path / "s"))
        server.listen()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(tmp_path / "s"))
    assert outbound.take() == []


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
        ("0.0.0.0", True), ("localhost", True), ("api.localhost", True), (b"127.0.0.1", True),
        ("10.0.0.1", False), ("192.168.1.1", False), (NOWHERE, False), ("::ffff:8.8.8.8", False),
        ("2001:db8::1", False), ("example.org", False),
    ],
)  # fmt: skip
def test_what_counts_as_local(host: str | bytes, local: bool) -> None:
    assert is_local_host(host) is local


def test_a_test_that_swallows_the_error_still_fails(tmp_path: Path) -> None:
    """The guard fails the test even when the code under test catches the connection error (as an HTTP
    client retrying or a telemetry thread would); a loopback-only test in the same run passes."""
    (tmp_path / "conftest.py").write_text(
        "from tests.offline import pytest_configure, pytest_runtest_makereport, pytest_unconfigure\n"
    )
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            f"""
            import contextlib
            import socket

            def test_phones_home():
                with contextlib.suppress(OSError), socket.socket() as s:
                    s.settimeout(0.5)
                    s.connect(("{NOWHERE}", 80))

            def test_stays_home():
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", str(tmp_path)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 1 passed" in done.stdout
    assert f"connect {NOWHERE}:80, from:" in done.stdout and "test_phones_home" in done.stdout
