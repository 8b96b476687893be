"""What routes take: the app state, the caller's key, the model in force, the guarded feature store."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool

from features import keys
from features.experiments import ExperimentRegistry
from features.settings import Settings
from models.ranking import RankingModel
from service.answer_cache import AnswerCache
from service.auth import ApiClient, KeyRing
from service.errors import (
    AuthenticationError,
    ForbiddenError,
    InvalidFieldError,
    NoModelError,
    StoreUnavailableError,
)
from service.exposures import ExposureWriter
from service.logs import StudentHasher
from service.metrics import Metrics
from service.model_manager import ModelManager
from service.redis_reads import AsyncReader

if TYPE_CHECKING:
    from features.online_state import StudentRecord
    from features.profile import StudentProfile
    from features.store import EventIn, EventOutcome, FeatureStore

logger = logging.getLogger("learnrec.service.store")
T = TypeVar("T")

#: After a failed feature-store call, reads skip Redis for this long (answers are degraded at once
#: instead of each waiting for its own timeout); then one request tries again.
BREAKER_COOLDOWN_SECONDS = 0.5
#: Records kept in process for degraded answers (region, grade and history "as far as known").
RECORD_CACHE_SIZE = 20_000


def _store_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    from features.errors import FeatureStoreError

    return (RedisError, FeatureStoreError, OSError)


class GuardedStore:
    """The feature store behind a small circuit breaker, with a bounded cache of the records last read.

    Reads never raise: on failure they return the cached record (or None) flagged degraded. Writes raise
    `StoreUnavailableError` (503) so the client retries; nothing is half-acknowledged.
    """

    def __init__(
        self,
        store: FeatureStore | None,
        metrics: Metrics,
        *,
        unavailable: str | None = None,
        written: Callable[[list[str]], None] | None = None,
        reader: AsyncReader | None = None,
    ) -> None:
        self.store = store
        #: told which students a write through this store changed (the answer cache drops them)
        self._written = written
        self._metrics = metrics
        self._errors = _store_errors()
        self._open_until = 0.0
        self._unavailable = unavailable or "feature store not configured"
        #: the records last read, as `StudentRecord.packed` (the garbage collector never walks bytes;
        #: `service.model_manager`)
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_lock = threading.Lock()
        #: the last call succeeded (None: no call yet)
        self._up: bool | None = None
        #: reads on the event loop (None: through `store`'s client in a worker thread)
        self.reader: AsyncReader | None = reader

    # -- state ------------------------------------------------------------------------------------

    def _failed(self, operation: str, exc: BaseException) -> None:
        self._metrics.redis_errors.labels(operation=operation).inc()
        self._metrics.redis_up.set(0)
        self._open_until = time.monotonic() + BREAKER_COOLDOWN_SECONDS
        if self._up is not False:  # log the transition, not every failed request
            logger.error(
                "feature store unavailable; answering degraded",
                extra={"operation": operation, "error": repr(exc)},
            )
        self._up = False

    def _succeeded(self) -> None:
        self._open_until = 0.0
        if self._up is not True:  # the transition only: every read passes here
            if self._up is False:
                logger.info("feature store reachable again; normal answers resume")
            self._up = True
            self._metrics.redis_up.set(1)

    @property
    def up(self) -> bool:
        return self._up is not False and self.store is not None

    # -- reads ------------------------------------------------------------------------------------

    def read_student(
        self, student_id: str, model_name: str, version: str
    ) -> tuple[StudentRecord | None, bool]:
        """(record, degraded): the record, or if the store cannot answer the last one seen (None if never)."""
        if self.store is not None and time.monotonic() >= self._open_until:
            try:
                record = self.store.read_student(student_id, model_name, version)
            except self._errors as exc:
                self._failed("read_student", exc)
            else:
                return self._read(student_id, record)
        return self._last_seen(student_id)

    async def read_student_async(
        self, student_id: str, model_name: str, version: str
    ) -> tuple[StudentRecord | None, bool]:
        """`read_student` on the event loop: through the pipelined reader when there is one
        (`service.redis_reads`), else the synchronous client in a worker thread."""
        reader, store = self.reader, self.store
        if reader is None or store is None:
            return await run_in_threadpool(self.read_student, student_id, model_name, version)
        if time.monotonic() >= self._open_until:
            try:
                replies = await reader.execute_packed(store.read_payload(student_id, model_name, version), 4)
                record = store.record(student_id, replies, with_state=True)
            except self._errors as exc:
                self._failed("read_student", exc)
            else:
                return self._read(student_id, record)
        return self._last_seen(student_id)

    async def read_state_async(self, student_id: str, model_name: str, version: str) -> bytes | None:
        """`read_state` on the event loop (see `read_student_async`)."""
        reader = self.reader
        if reader is None or self.store is None:
            return await run_in_threadpool(self.read_state, student_id, model_name, version)
        if time.monotonic() < self._open_until:
            return None
        try:
            (raw,) = await reader.execute([("GET", keys.model_state(student_id, model_name, version))])
        except self._errors as exc:
            self._failed("read_state", exc)
            return None
        return bytes(raw) if raw is not None else None

    def read_state(self, student_id: str, model_name: str, version: str) -> bytes | None:
        """The student's model state under another version (one GET); None when absent or Redis fails."""
        if self.store is None or time.monotonic() < self._open_until:
            return None
        try:
            raw = self.store.client.get(keys.model_state(student_id, model_name, version))
        except self._errors as exc:
            self._failed("read_state", exc)
            return None
        return bytes(raw) if raw is not None else None

    def ping(self) -> bool:
        """True when Redis answers PING now (used by /readyz; bypasses the breaker)."""
        if self.store is None:
            return False
        try:
            ok = bool(self.store.client.ping())
        except self._errors as exc:
            self._failed("ping", exc)
            return False
        self._succeeded()
        return ok

    # -- writes (and reads that must not be guessed) ----------------------------------------------

    def _call(self, operation: str, fn: Callable[[FeatureStore], T]) -> T:
        """Run `fn` on the store; a store failure becomes a 503 telling the client to retry."""
        if self.store is None:
            raise StoreUnavailableError(
                f"feature store unavailable ({self._unavailable}): nothing was stored; retry later"
            )
        from features.errors import ReplicaAckError

        try:
            result = fn(self.store)
        except ReplicaAckError as exc:  # Redis answered, a replica was late: reads need not degrade
            self._metrics.redis_errors.labels(operation="replica_ack").inc()
            raise StoreUnavailableError(f"{operation}: {exc}") from exc
        except self._errors as exc:
            self._failed(operation, exc)
            raise StoreUnavailableError(
                f"feature store unavailable during {operation}: the request may not be stored; "
                "retry it unchanged (event ids make retries safe)"
            ) from exc
        self._succeeded()
        return result

    def get_profiles(self, student_ids: list[str]) -> dict[str, StudentProfile]:
        """Registered profiles of these students (absent ids are left out)."""

        def read(store: FeatureStore) -> dict[str, StudentProfile]:
            # one pipeline for the whole batch (it also reads histories: cheaper than a round trip each)
            records = store.read_students(student_ids)
            pairs = zip(student_ids, records, strict=True)
            return {sid: r.profile for sid, r in pairs if r.profile is not None}

        return self._call("read_students", read)

    def put_profile(self, profile: StudentProfile) -> None:
        self._call("put_profiles", lambda store: store.put_profiles([profile]))
        self.forget([profile.student_id])

    def apply_events(self, events: list[EventIn]) -> list[EventOutcome]:
        """Store events; per event "accepted", "duplicate" or "conflict" (`FeatureStore.apply_events`)."""
        try:
            applied = self._call("apply_events", lambda store: store.apply_events(events))
        except ValueError as exc:  # the store re-checks what the API validated: a mismatch is a 422
            raise InvalidFieldError(("body", "events"), str(exc)) from exc
        self.forget(sorted({e.student_id for e in events}))
        return list(applied)

    # -- cache ------------------------------------------------------------------------------------

    def _read(self, student_id: str, record: StudentRecord) -> tuple[StudentRecord, bool]:
        """A read Redis answered: the breaker closes and the record is kept for degraded answers."""
        self._succeeded()
        self._remember(student_id, record)
        return record, False

    def _last_seen(self, student_id: str) -> tuple[StudentRecord | None, bool]:
        """Redis did not answer: the last record seen of the student (None if never), degraded."""
        from features.online_state import StudentRecord

        with self._cache_lock:
            packed = self._cache.get(student_id)
        return (StudentRecord.unpacked(student_id, packed) if packed is not None else None), True

    def _remember(self, student_id: str, record: StudentRecord) -> None:
        if record.profile is None and not record.history:
            return  # nothing worth knowing when Redis is down
        packed = record.packed()
        with self._cache_lock:
            self._cache[student_id] = packed
            self._cache.move_to_end(student_id)
            if len(self._cache) > RECORD_CACHE_SIZE:
                self._cache.popitem(last=False)

    def forget(self, student_ids: list[str]) -> None:
        """Drop cached records (and, through `written`, answers) that a write just made stale."""
        with self._cache_lock:
            for sid in student_ids:
                self._cache.pop(sid, None)
        if self._written is not None:
            self._written(student_ids)


@dataclass
class AppState:
    """Everything the routes share; built by the lifespan, stored at `app.state.learnrec`."""

    settings: Settings
    keys: KeyRing
    metrics: Metrics
    models: ModelManager
    store: GuardedStore
    hash_student: StudentHasher
    extras: dict[str, Any] = field(default_factory=dict)
    #: A/B experiments in force; replaced whole when the file changes (after the variants' models load).
    experiments: ExperimentRegistry = field(default_factory=ExperimentRegistry.empty)
    #: Where answered recommendations are logged (None: not logged, e.g. before the lifespan ran).
    exposures: ExposureWriter | None = None
    #: Answers kept until Redis reports a change to the student's keys (off until the lifespan's listener
    #: says reports flow).
    answers: AnswerCache = field(default_factory=lambda: AnswerCache(0))


async def get_state(request: Request) -> AppState:
    # async: FastAPI runs a plain `def` dependency in the threadpool (a thread hop per request)
    state: AppState = request.app.state.learnrec
    return state


StateDep = Annotated[AppState, Depends(get_state)]

#: Name of the API key's security scheme in the OpenAPI document.
API_KEY_SCHEME = "APIKeyHeader"

api_key_header = APIKeyHeader(
    scheme_name=API_KEY_SCHEME,
    name="X-API-Key",
    auto_error=False,
    description="Client API key. Each key is scoped to partner region(s); admin routes need an admin key.",
)


async def require_client(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> ApiClient:
    """The calling client, or 401."""
    return _client(request, request.app.state.learnrec, key)


def client_of(request: Request, state: AppState) -> ApiClient:
    """The calling client, or 401: `require_client` for a route that reads the header itself.

    The header is found in the ASGI scope (names come lower-cased; the first one counts, as with
    `request.headers`) without building Starlette's `Headers` around it.
    """
    key = None
    for name, value in request.scope["headers"]:
        if name == b"x-api-key":
            key = value.decode("latin-1")
            break
    return _client(request, state, key)


def _client(request: Request, state: AppState, key: str | None) -> ApiClient:
    if not key:
        raise AuthenticationError("missing API key: send it in the X-API-Key header")
    client = state.keys.authenticate(key)
    if client is None:
        raise AuthenticationError("unknown API key (X-API-Key)")
    request.state.client = client.name
    return client


ClientDep = Annotated[ApiClient, Depends(require_client)]


async def require_admin(client: ClientDep) -> ApiClient:
    """The calling client when it holds an admin key, or 403."""
    if not client.admin:
        raise ForbiddenError(f"admin route: key '{client.name}' is not an admin key")
    return client


AdminDep = Annotated[ApiClient, Depends(require_admin)]


def require_model(state: AppState) -> RankingModel:
    """The model version serving now (one reference for the whole request), or 503.

    Called inside routes rather than as a dependency, so a malformed request gets its 422 first.
    """
    model = state.models.current
    if model is None:
        raise NoModelError(state.models.unavailable_reason())
    return model


def known_regions(state: AppState) -> list[str]:
    """Regions a student may be registered in: configured (``service.regions``), named by an API key,
    or in a serving model's catalogue (its licences and its students), in order."""
    from features.schemas import ALL_REGIONS

    found = set(state.settings.service.regions) | state.keys.regions
    for model in (state.models.current, *state.models.variants.values()):
        if model is not None:
            found.update(model.catalogue.regions.ids)
    found.discard(ALL_REGIONS)
    return sorted(found)


def check_known_region(state: AppState, region: str) -> None:
    """422 naming the region when no configuration, key or model knows it (a typo, or a partner not
    yet added)."""
    known = known_regions(state)
    if region not in known:
        raise InvalidFieldError(
            ("body", "region"),
            f"unknown region '{region}': expected one of {', '.join(known)} (a new partner region is "
            "added to LEARNREC_SERVICE__REGIONS)",
        )


def check_region(client: ApiClient, region: str | None, what: str) -> None:
    """403 when `client` may not touch a student of `region`."""
    if not client.may_access(region):
        allowed = ", ".join(sorted(client.regions))
        raise ForbiddenError(f"{what} belongs to region '{region}'; key '{client.name}' serves {allowed}")
