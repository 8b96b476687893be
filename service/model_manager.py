"""Loads the registered model by alias, and swaps in a new version atomically when the alias moves.

A request takes one reference to the `ServingModel` in force (`manager.current`) and uses it to the end,
so a swap never changes a model under a running request; the old version is freed when the last request
holding it finishes. A version that fails to load (or to prepare for ranking) leaves the old one serving;
the reason goes to the log, to `learnrec_model_reload_failures_total` and to `status()`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from service.metrics import Metrics
from service.ranking import RankingModel

if TYPE_CHECKING:
    from models.loading import LoadedModel

logger = logging.getLogger("learnrec.service.models")

#: A version that failed to load is tried again by the poller after this long (admin reload: at once).
RETRY_FAILED_SECONDS = 300.0

Loader = Callable[[str, str, str], "LoadedModel"]
Resolver = Callable[[str, str, str], "str | None"]


def _default_loader(model_name: str, alias_or_version: str, tracking_uri: str) -> LoadedModel:
    from models.loading import load_registered

    return load_registered(model_name, alias_or_version, tracking_uri)


def _default_resolver(model_name: str, alias: str, tracking_uri: str) -> str | None:
    from models.loading import resolve_alias

    return resolve_alias(model_name, alias, tracking_uri)


@dataclass(frozen=True)
class CheckResult:
    """What one alias check did."""

    changed: bool
    serving: RankingModel | None
    previous: RankingModel | None = None
    error: str | None = None


class ModelManager:
    """Holds the model version being served and follows the alias.

    Args:
        model_name: registered model name.
        alias: alias to follow (for example ``champion``).
        tracking_uri: MLflow tracking URI of the registry.
        metrics: where load failures and the served version are reported.
        loader / resolver: how to load a version and resolve the alias (the MLflow registry by default).
    """

    def __init__(
        self,
        model_name: str,
        alias: str,
        tracking_uri: str,
        metrics: Metrics,
        *,
        loader: Loader = _default_loader,
        resolver: Resolver = _default_resolver,
    ) -> None:
        self.model_name = model_name
        self.alias = alias
        self.tracking_uri = tracking_uri
        self._metrics = metrics
        self._loader = loader
        self._resolver = resolver
        # reads of this attribute are atomic; it is only ever replaced, never mutated
        self._current: RankingModel | None = None
        self._lock = threading.Lock()  # one load at a time (poller and admin reload)
        self.last_check: datetime | None = None
        self.last_error: str | None = None
        self.failed_version: str | None = None
        self._failed_at = float("-inf")

    @property
    def current(self) -> RankingModel | None:
        return self._current

    def unavailable_reason(self) -> str:
        """Why nothing is serving, in words a client can act on."""
        base = (
            f"no model loaded: registered model '{self.model_name}' has no loadable version "
            f"under alias '{self.alias}'"
        )
        if self.last_error:
            return f"{base} ({self.last_error})"
        return f"{base}; train and promote one (learnrec train, learnrec promote), then POST /admin/reload"

    def check(self, *, force: bool = False) -> CheckResult:
        """Resolve the alias; load and swap in its version when it differs from the one serving.

        A version that failed before is retried by the poller only after `RETRY_FAILED_SECONDS` (it
        would most likely fail the same way every poll); `force` (admin reload) retries it at once.
        """
        with self._lock:
            self.last_check = datetime.now(UTC)
            previous = self._current
            try:
                version = self._resolver(self.model_name, self.alias, self.tracking_uri)
            except Exception as exc:  # the registry being down must not stop the service
                return self._failed(previous, None, "registry_unreachable", f"cannot resolve alias: {exc!r}")
            if version is None:
                if previous is None:
                    self.last_error = None
                    return CheckResult(False, None)
                # the alias was removed: keep serving what we have rather than nothing
                logger.warning(
                    "alias no longer set; keeping the loaded version",
                    extra={"model": self.model_name, "alias": self.alias, "version": previous.version},
                )
                return CheckResult(False, previous)
            if previous is not None and previous.version == version:
                return CheckResult(False, previous)
            recently_failed = time.monotonic() - self._failed_at < RETRY_FAILED_SECONDS
            if version == self.failed_version and recently_failed and not force:
                return CheckResult(False, previous, error=self.last_error)
            return self._load(version, previous)

    def _load(self, version: str, previous: RankingModel | None) -> CheckResult:
        started = time.perf_counter()
        try:
            loaded = self._loader(self.model_name, version, self.tracking_uri)
        except Exception as exc:
            return self._failed(previous, version, "load_error", f"version {version} failed to load: {exc!r}")
        try:
            prepared = RankingModel.prepare(loaded, alias=self.alias)
        except Exception as exc:
            return self._failed(
                previous, version, "prepare_error", f"version {version} cannot be served: {exc!r}"
            )
        self._current = prepared  # the swap: one reference assignment
        self.last_error = None
        self.failed_version = None
        self._metrics.set_model(self.model_name, prepared.version, self.alias, prepared.run_id or "")
        self._metrics.model_reloads.inc()
        logger.info(
            "model version loaded and serving",
            extra={
                "model": self.model_name,
                "alias": self.alias,
                "version": prepared.version,
                "previous_version": previous.version if previous else None,
                "load_seconds": round(time.perf_counter() - started, 3),
                "n_lectures": prepared.n_lectures,
            },
        )
        return CheckResult(True, prepared, previous)

    def _failed(
        self, previous: RankingModel | None, version: str | None, reason: str, message: str
    ) -> CheckResult:
        self.last_error = message
        if version is not None:
            self.failed_version = version
            self._failed_at = time.monotonic()
        self._metrics.model_reload_failures.labels(reason=reason).inc()
        logger.error(
            "model reload failed; %s",
            "the previous version keeps serving" if previous else "nothing is serving",
            extra={
                "model": self.model_name,
                "alias": self.alias,
                "version": version,
                "serving_version": previous.version if previous else None,
                "reason": reason,
                "error": message,
            },
        )
        return CheckResult(False, previous, error=message)

    async def poll(self, interval: float) -> None:
        """Check the alias every `interval` seconds until cancelled (loads run in a worker thread)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.check)
            except (
                Exception
            ):  # check() reports load failures itself; anything else is a bug, but the loop lives
                logger.exception("alias check crashed", extra={"model": self.model_name, "alias": self.alias})
