"""Run an app under a real uvicorn server in a thread, on a socket bound before start (no port race)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI

from service.logs import JsonFormatter


class LiveServer:
    """`with LiveServer(app) as server:` starts uvicorn (lifespan included) and stops it on exit."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", log_level="warning")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("uvicorn exited during start-up (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start within 60 s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)
        self._sock.close()


class LogLines(logging.Handler):
    """Collects the service's log lines exactly as they would be written (JSON)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        with self._lock2:
            self.lines.append(line)

    def records(self) -> list[dict[str, Any]]:
        with self._lock2:
            return [json.loads(x) for x in self.lines]

    def text(self) -> str:
        with self._lock2:
            return "\n".join(self.lines)
