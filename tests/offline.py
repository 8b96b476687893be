"""The separated-network guard: a test that opens a connection to anything but loopback fails.

learnrec runs on public-sector networks cut off from the internet, so `make test` proves the suite needs
no outbound connection: every `connect`/`connect_ex` on a Python socket and every name lookup is checked;
loopback (127.0.0.0/8, ::1, ``localhost``) and Unix sockets pass, anything else raises
`OutboundConnectionBlocked` and is recorded. The hooks (imported by ``tests/conftest.py``) fail the test
phase (setup, call or teardown) that made a recorded attempt, even when the code swallowed the error
(an HTTP client retrying, a telemetry thread catching everything).

Not seen: connections made by other processes (uvicorn started as a subprocess, redis-server, the MLflow
UI) and by C code that bypasses Python's socket module (uvloop's own connects). A test that expects a
blocked attempt takes it with the ``outbound`` fixture, which clears it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from features.settings import MlflowSettings

PROJECT = str(Path(__file__).resolve().parents[1])
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class OutboundConnectionBlocked(OSError):
    """A test tried to reach an address that is not on this machine."""


def is_local_host(host: Any) -> bool:
    """Loopback, unspecified (connecting there reaches this machine) or a name of this machine."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host is None or host == "":
        return True
    name = str(host).lower().rstrip(".")
    if name in LOCAL_NAMES or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def _is_numeric(host: Any) -> bool:
    try:
        ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return False
    return True


@dataclass
class Guard:
    """The patches on the socket module and the attempts they refused since the last `take`."""

    attempts: list[tuple[str, str]] = field(default_factory=list)
    _saved: dict[str, Any] = field(default_factory=dict)
    _depth: int = 0

    def _refuse(self, what: str) -> OutboundConnectionBlocked:
        # the stack is kept because the error itself may be swallowed far from the test's own code: the
        # project's frames say who asked, the innermost library frames how
        frames = traceback.extract_stack()[:-3]  # up to the patched call
        ours = [f for f in frames if f.filename.startswith(PROJECT) and "/.venv/" not in f.filename]
        inner = [f for f in frames[-3:] if f not in ours]
        self.attempts.append((what, "".join(traceback.format_list(ours[-5:] + inner))))
        return OutboundConnectionBlocked(
            f"outbound connection blocked: {what} (tests run as on a separated network: loopback only)"
        )

    def check_address(self, sock: socket.socket, address: Any) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return  # Unix sockets, netlink: never leave the machine
        host, port = address[0], address[1]
        if not is_local_host(host):
            raise self._refuse(f"connect {host}:{port}")

    def install(self) -> None:
        """Patch the socket module (nested installs are counted: only the outermost one patches)."""
        self._depth += 1
        if self._depth > 1:
            return
        guard = self
        cls = socket.socket
        self._saved = {
            "connect": cls.connect,
            "connect_ex": cls.connect_ex,
            "getaddrinfo": socket.getaddrinfo,
        }
        connect, connect_ex, getaddrinfo = (self._saved[k] for k in ("connect", "connect_ex", "getaddrinfo"))

        def guarded_connect(sock: socket.socket, address: Any) -> None:
            guard.check_address(sock, address)
            connect(sock, address)

        def guarded_connect_ex(sock: socket.socket, address: Any) -> int:
            guard.check_address(sock, address)
            result: int = connect_ex(sock, address)
            return result

        def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            # a numeric address resolves without the network (its connect is checked); a name is a DNS query
            if not is_local_host(host) and not _is_numeric(host) and host != socket.gethostname():
                raise guard._refuse(f"name lookup {host}")
            return getaddrinfo(host, *args, **kwargs)

        cls.connect = guarded_connect  # type: ignore[method-assign,assignment]
        cls.connect_ex = guarded_connect_ex  # type: ignore[method-assign,assignment]
        socket.getaddrinfo = guarded_getaddrinfo

    def uninstall(self) -> None:
        self._depth -= 1
        if self._depth > 0 or not self._saved:
            return
        socket.socket.connect = self._saved["connect"]  # type: ignore[method-assign]
        socket.socket.connect_ex = self._saved["connect_ex"]  # type: ignore[method-assign]
        socket.getaddrinfo = self._saved["getaddrinfo"]
        self._saved = {}

    def take(self) -> list[str]:
        """The attempts refused since the last call (what was tried, without the stacks); clears them."""
        taken, self.attempts = self.attempts, []
        return [what for what, _ in taken]

    def report(self) -> str:
        lines = ["outbound connection attempted (tests run as on a separated network: loopback only):"]
        for what, stack in self.attempts:
            lines += [f"  {what}, from:", stack.rstrip()]
        return "\n".join(lines)


GUARD = Guard()


def pytest_configure(config: pytest.Config) -> None:
    # from configure on, so that collection and session fixtures are covered too
    GUARD.install()
    # the suite runs as learnrec does (MLflow's usage reporting off): tests that use mlflow directly,
    # without a learnrec entry point, would otherwise start its telemetry thread (caught here once: a
    # lookup of config.mlflow-telemetry.io). MLflow's own pytest check misses it: it looks at import time.
    os.environ.update(MlflowSettings().telemetry_environment())


def pytest_unconfigure(config: pytest.Config) -> None:
    GUARD.uninstall()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    if not GUARD.attempts:
        return
    report = outcome.get_result()
    report.outcome = "failed"
    report.longrepr = GUARD.report()
    GUARD.attempts.clear()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if GUARD.attempts:  # outside any test: collection, a session fixture's teardown, a stray thread
        session.config.get_terminal_writer().line(GUARD.report(), red=True)
        GUARD.attempts.clear()
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def outbound() -> Iterator[Guard]:
    """The guard, for a test that makes an attempt on purpose and takes it (`outbound.take()`)."""
    yield GUARD
