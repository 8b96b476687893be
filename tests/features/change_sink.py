"""A `features.key_changes.ChangeSink` that records what a listener reports (the service's `AnswerCache`
implements the same three calls), shared by the single-server and the cluster tests."""

from __future__ import annotations

import threading


class Sink:
    """Records what the listener reports."""

    def __init__(self) -> None:
        self.students: list[str] = []
        self.clears = 0
        self.states: list[bool] = []
        self.lock = threading.Lock()

    def invalidate(self, student_ids: list[str]) -> None:
        with self.lock:
            self.students += student_ids

    def clear(self) -> None:
        with self.lock:
            self.clears += 1

    def live(self, up: bool) -> None:
        with self.lock:
            self.states.append(up)
