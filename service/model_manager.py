"""Loads the registered model by alias, and swaps in a new version atomically when the alias moves.

It also holds the models experiment variants serve (other aliases such as ``challenger``, or pinned
version numbers), loaded and hot-swapped the same way; `get(ref)` returns the one for a variant.

A request takes one reference to the `ServingModel` in force (`manager.current`) and uses it to the end,
so a swap never changes a model under a running request; the old version is freed when the last request
holding it finishes. A version that fails to load (or to prepare for ranking) leaves the old one serving;
the reason goes to the log, to `learnrec_model_reload_failures_total` and to `status()`.

After a swap, everything then alive (modules, the models in force) is moved out of the garbage
collector's sight (`settle_heap`), and `serving_gc_thresholds` makes young collections rarer. Why: a
computed answer leaves a few long-lived objects behind (answer-cache and record-cache entries), so the
collector ran every ~45 answers and, every ~6,000, a full pass over the ~300,000 objects of the loaded
process: about 70 us of CPU per computed answer on the bench machine (`gc.callbacks`, thread CPU), and a
pause of 0.2-0.3 s each full pass (the sessions workload's p99). Frozen and with the thresholds below:
about 7 us per answer and no full pass over the models. Rare passes are short only while requests leave
nothing tracked behind: the answer cache and the record cache keep bytes (`service.answer_cache`,
`StudentRecord.packed`); tuples would do for the collector's bookkeeping, but a young pass walks every
element of every tuple made since the last one (10,000 thresholds apart: 20-80 ms).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from models.ranking import RankingModel
from service.metrics import Metrics
from service.schemas import VariantState

if TYPE_CHECKING:
    from models.loading import LoadedModel

logger = logging.getLogger("learnrec.service.models")

#: A version that failed to load is tried again by the poller after this long (admin reload: at once).
RETRY_FAILED_SECONDS = 300.0

#: The collector's thresholds while serving (CPython's defaults: 700, 10, 10): a young collection per
#: 10,000 net new container objects instead of 700, older generations every 20 of the younger.
SERVING_GC_THRESHOLDS = (10_000, 20, 20)

Loader = Callable[[str, str, str], "LoadedModel"]
Resolver = Callable[[str, str, str], "str | None"]


def _default_loader(model_name: str, alias_or_version: str, tracking_uri: str) -> LoadedModel:
    from models.loading import load_registered

    return load_registered(model_name, alias_or_version, tracking_uri)


def _default_resolver(model_name: str, alias: str, tracking_uri: str) -> str | None:
    from models.loading import resolve_alias

    return resolve_alias(model_name, alias, tracking_uri)


@dataclass(frozen=True)
class VariantStatus:
    """One model reference the experiments need: what serves it, or why nothing does.

    ``status``: ``serving`` (loaded, last check fine), ``serving_previous`` (loaded, but the version the
    reference points at now failed to load: the previous one keeps serving), ``unavailable`` (nothing
    loaded: the champion answers for its variants).
    """

    ref: str
    model: RankingModel | None
    status: VariantState
    error: str | None = None


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
        # experiment variants: reference (alias or version) -> model; replaced whole, never mutated
        self._wanted: frozenset[str] = frozenset()
        self._variants: Mapping[str, RankingModel] = {}
        self.variant_errors: dict[str, str] = {}
        self._variant_failed: dict[str, tuple[str, float]] = {}

    @property
    def current(self) -> RankingModel | None:
        return self._current

    @property
    def variants(self) -> Mapping[str, RankingModel]:
        """Models loaded for experiment variants, by reference (alias or version number)."""
        return self._variants

    def variant_status(self) -> list[VariantStatus]:
        """Every reference the experiments need (and any still loaded), by reference."""
        loaded, errors = self._variants, dict(self.variant_errors)
        out = []
        for ref in sorted(self._wanted | set(loaded)):
            model, error = loaded.get(ref), errors.get(ref)
            if model is None:
                out.append(VariantStatus(ref, None, "unavailable", error or "not loaded yet"))
            else:
                out.append(VariantStatus(ref, model, "serving_previous" if error else "serving", error))
        return out

    def set_variant_refs(self, refs: Iterable[str]) -> None:
        """The model references experiment variants need; the next `check` loads them (and drops others)."""
        self._wanted = frozenset(r for r in refs if r != self.alias)

    def get(self, ref: str) -> RankingModel | None:
        """The model serving ``ref`` (the followed alias, another alias, or a version), None if not loaded."""
        if ref == self.alias:
            return self._current
        return self._variants.get(ref)

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

        The models of experiment variants (`set_variant_refs`) are checked the same way right after.

        A version that failed before is retried by the poller only after `RETRY_FAILED_SECONDS` (it
        would most likely fail the same way every poll); `force` (admin reload) retries it at once.
        """
        with self._lock:
            variants = dict(self._variants)
            result = self._check_champion(force)
            if self._wanted or self._variants:
                self._check_variants(force)
            if result.changed or variants != self._variants:
                settle_heap()
        return result

    def _check_champion(self, force: bool) -> CheckResult:
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
            prepared = _serving(loaded, self.alias)
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

    def _check_variants(self, force: bool) -> None:
        """Load or swap the model of every wanted variant reference; a failure keeps what was loaded."""
        wanted = self._wanted
        loaded = {ref: m for ref, m in self._variants.items() if ref in wanted}
        self.variant_errors = {ref: e for ref, e in self.variant_errors.items() if ref in wanted}
        for ref in sorted(wanted):
            pinned = ref.isdigit()
            try:
                version = ref if pinned else self._resolver(self.model_name, ref, self.tracking_uri)
            except Exception as exc:
                self._variant_failed_load(
                    ref, None, "registry_unreachable", f"cannot resolve {ref!r}: {exc!r}"
                )
                continue
            if version is None:
                if ref not in loaded:
                    self.variant_errors[ref] = f"alias {ref!r} of '{self.model_name}' is not set"
                continue  # a removed alias keeps its loaded version, like the champion
            have = loaded.get(ref)
            if have is not None and have.version == version:
                continue
            failed = self._variant_failed.get(ref)
            if (
                failed is not None
                and failed[0] == version
                and time.monotonic() - failed[1] < RETRY_FAILED_SECONDS
                and not force
            ):
                continue
            prepared = self._prepared(ref, version, loaded)
            if prepared is None:
                continue
            loaded[ref] = prepared
            self._variants = dict(loaded)  # install each as soon as it is ready
            self.variant_errors.pop(ref, None)
            self._variant_failed.pop(ref, None)
            logger.info(
                "variant model loaded and serving",
                extra={
                    "model": self.model_name,
                    "ref": ref,
                    "version": version,
                    "previous_version": have.version if have else None,
                },
            )
        self._variants = loaded
        self._metrics.variant_models.clear()
        for ref, m in loaded.items():
            self._metrics.variant_models.labels(model=self.model_name, ref=ref, version=m.version).set(1)

    def _prepared(self, ref: str, version: str, loaded: Mapping[str, RankingModel]) -> RankingModel | None:
        """The version ready to serve under ``ref``: shared with a loaded one when possible, else loaded."""
        alias = None if ref.isdigit() else ref
        for m in (self._current, *loaded.values()):
            if m is not None and m.version == version:
                # same version already in memory: share its arrays, only the reported alias differs
                return m.with_alias(alias)
        try:
            loaded_model = self._loader(self.model_name, version, self.tracking_uri)
        except Exception as exc:
            self._variant_failed_load(
                ref, version, "load_error", f"version {version} failed to load: {exc!r}"
            )
            return None
        try:
            prepared = _serving(loaded_model, alias)
        except Exception as exc:
            self._variant_failed_load(
                ref, version, "prepare_error", f"version {version} cannot be served: {exc!r}"
            )
            return None
        self._metrics.model_reloads.inc()
        return prepared if prepared.alias == alias else prepared.with_alias(alias)

    def _variant_failed_load(self, ref: str, version: str | None, reason: str, message: str) -> None:
        self.variant_errors[ref] = message
        if version is not None:
            self._variant_failed[ref] = (version, time.monotonic())
        self._metrics.model_reload_failures.labels(reason=reason).inc()
        logger.error(
            "variant model reload failed; %s",
            "its previous version keeps serving" if ref in self._variants else "the champion answers for it",
            extra={
                "model": self.model_name,
                "ref": ref,
                "version": version,
                "reason": reason,
                "error": message,
            },
        )

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


def _serving(loaded: LoadedModel, alias: str | None) -> RankingModel:
    """A loaded version ready for requests: its ranking arrays and its followers (`models.candidates`),
    computed here, off the request path, rather than by the first request that needs them."""
    prepared = RankingModel.prepare(loaded, alias=alias)
    started = time.perf_counter()
    followers = prepared.followers  # computed now, not by the first request that needs them
    logger.info(
        "followers computed",
        extra={
            "version": prepared.version,
            "lectures": int(followers.rows.shape[0]),
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    return prepared


def serving_gc_thresholds() -> None:
    """Set the collector's thresholds for serving (`SERVING_GC_THRESHOLDS`; see the module docstring)."""
    gc.set_threshold(*SERVING_GC_THRESHOLDS)


def settle_heap() -> None:
    """Collect, then freeze what is alive (`gc.freeze`): later collections skip it.

    Unfrozen first, so a model just swapped out is collected now rather than kept forever.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
