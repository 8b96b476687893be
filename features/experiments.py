"""A/B experiments: the YAML config, its validation, and stateless sticky assignment of students to variants.

Config file (``settings.service.experiments_file``)::

    experiments:
      - key: lightfm-v2-partners          # unique, used in exposures and reports
        salt: lightfm-v2-2025-09          # unique; defaults to the key
        regions: [chungbuk, taebaek]
        start: 2025-09-01T00:00:00Z       # UTC; a naive timestamp or a date is read as UTC
        end: 2025-10-01T00:00:00Z         # exclusive
        variants:                         # the FIRST variant is the control of the analysis
          - {name: control, weight: 50, model: champion}
          - {name: challenger, weight: 50, model: challenger}   # alias, or a version number

Assignment: ``bucket = int(sha256(f"{salt}:{student_id}")[:8 bytes]) % 10_000``; each variant owns a
contiguous range of buckets proportional to its weight. The same student always lands in the same bucket
(sticky, no per-student state), and experiments with different salts split students independently.

Overlap rule: two experiments that share a region and whose windows overlap are REFUSED when the file is
loaded. With a "first by start time wins" rule the later experiment would silently get no traffic in the
shared region (or a population filtered by the other experiment), and its per-region analysis would be
wrong without anyone noticing; refusing makes the conflict visible to whoever edits the file. Experiments
may share a region one after the other (``end`` of one <= ``start`` of the next), and may run in parallel
in different regions. So at any instant a (region, time) pair belongs to at most one experiment.

A student whose region is in no active experiment (or who comes outside the time window) gets ``None``:
the service then serves the champion and logs no experiment.

Nothing here touches pandas or does I/O per request: `ExperimentRegistry.assign` reads a precomputed
snapshot and, at most every ``check_interval`` seconds, one ``os.stat`` of the file to reload on change.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features import streams
from features.schemas import REGION_PATTERN
from models.errors import LearnrecError

logger = logging.getLogger(__name__)

#: Students are hashed into this many buckets; a variant's share is resolved to 1/10,000.
N_BUCKETS = 10_000
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]*$")
_REGION = re.compile(REGION_PATTERN)


class ExperimentConfigError(LearnrecError, ValueError):
    """The experiments file is missing, unreadable or breaks a rule; the message names the file and field."""

    http_status = 422


def bucket(salt: str, student_id: str) -> int:
    """The student's bucket in ``[0, N_BUCKETS)`` for an experiment salt.

    Args:
        salt: the experiment's salt.
        student_id: opaque student id.

    Returns:
        ``int.from_bytes(sha256(f"{salt}:{student_id}").digest()[:8], "big") % N_BUCKETS`` (64 bits
        before the modulo, so the modulo bias is below 1e-15).
    """
    digest = hashlib.sha256(f"{salt}:{student_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % N_BUCKETS


def _as_utc(value: object) -> object:
    """YAML gives datetimes (naive or aware) or dates; everything becomes an aware UTC datetime."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return value  # pydantic reports it with the field name
        return _as_utc(parsed)
    return value


class VariantConfig(BaseModel):
    """One arm of an experiment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Variant name, unique within the experiment (slug).")
    weight: float = Field(
        gt=0, description="Relative share of the experiment's students; any positive scale."
    )
    model: str = Field(description="Registered-model alias (champion, challenger, ...) or a version number.")

    @field_validator("name")
    @classmethod
    def _name_is_slug(cls, v: str) -> str:
        if not _SLUG.match(v):
            raise ValueError(f"variant name {v!r} must be a slug (lower-case letters, digits, '_', '-', '.')")
        return v

    @field_validator("model", mode="before")
    @classmethod
    def _model_ref(cls, v: object) -> object:
        if isinstance(v, bool):
            raise ValueError("model must be an alias or a version number, not a boolean")
        if isinstance(v, int):
            if v < 1:
                raise ValueError(f"model version must be >= 1, got {v}")
            return str(v)
        if isinstance(v, str):
            v = v.strip()
            if v.isdigit() and int(v) >= 1:
                return str(int(v))
            if not _ALIAS.match(v):
                raise ValueError(f"model {v!r} is neither an alias (e.g. 'champion') nor a version number")
        return v


class ExperimentConfig(BaseModel):
    """One experiment as written in the YAML file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(description="Unique experiment key (slug); recorded on every exposure.")
    salt: str = Field(min_length=1, description="Hash salt; unique per experiment; defaults to the key.")
    regions: tuple[str, ...] = Field(min_length=1, description="Region codes the experiment runs in.")
    variants: tuple[VariantConfig, ...] = Field(min_length=2, description="Arms; the first is the control.")
    start: datetime = Field(description="Start (UTC, inclusive).")
    end: datetime = Field(description="End (UTC, exclusive).")

    @field_validator("key")
    @classmethod
    def _key_is_slug(cls, v: str) -> str:
        if not _SLUG.match(v):
            raise ValueError(f"key {v!r} must be a slug (lower-case letters, digits, '_', '-', '.')")
        return v

    @field_validator("regions", mode="before")
    @classmethod
    def _regions_list(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("regions")
    @classmethod
    def _regions_are_slugs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [r for r in v if not _REGION.match(r)]
        if bad:
            raise ValueError(f"region codes must match {REGION_PATTERN} (e.g. 'taebaek'), got {bad}")
        dup = sorted({r for r in v if v.count(r) > 1})
        if dup:
            raise ValueError(f"region listed twice: {dup}")
        return v

    @field_validator("start", "end", mode="before")
    @classmethod
    def _utc(cls, v: object) -> object:
        return _as_utc(v)

    @model_validator(mode="before")
    @classmethod
    def _salt_defaults_to_key(cls, data: object) -> object:
        if isinstance(data, Mapping) and not data.get("salt") and data.get("key"):
            data = {**data, "salt": data["key"]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variant names must be unique, repeated: {dup}")
        if self.end <= self.start:
            raise ValueError(f"end ({self.end.isoformat()}) must be after start ({self.start.isoformat()})")
        total = sum(v.weight for v in self.variants)
        for v in self.variants:
            if round(v.weight / total * N_BUCKETS) < 1:
                raise ValueError(
                    f"variant {v.name!r} weight {v.weight} is below 1/{N_BUCKETS} of the total; raise it"
                )
        return self

    @property
    def control(self) -> str:
        """Name of the control variant (the first one)."""
        return self.variants[0].name

    def shares(self) -> dict[str, float]:
        """Configured share of students per variant (weights normalised to sum to 1)."""
        total = sum(v.weight for v in self.variants)
        return {v.name: v.weight / total for v in self.variants}

    def active_at(self, now: datetime) -> bool:
        """Whether ``now`` (aware) falls in ``[start, end)``."""
        return self.start <= now < self.end


class ExperimentsFile(BaseModel):
    """The whole YAML file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiments: tuple[ExperimentConfig, ...] = ()

    @model_validator(mode="after")
    def _unique_and_disjoint(self) -> ExperimentsFile:
        for field in ("key", "salt"):
            values = [getattr(e, field) for e in self.experiments]
            dup = sorted({x for x in values if values.count(x) > 1})
            if dup:
                raise ValueError(f"experiment {field}s must be unique, repeated: {dup}")
        exps = self.experiments
        for i, a in enumerate(exps):
            for b in exps[i + 1 :]:
                shared = sorted(set(a.regions) & set(b.regions))
                if shared and a.start < b.end and b.start < a.end:
                    raise ValueError(
                        f"experiments {a.key!r} and {b.key!r} overlap in time in region(s) {shared}; "
                        "a region may run one experiment at a time: move one window or drop the region"
                    )
        return self


@dataclass(frozen=True, slots=True)
class Assignment:
    """A student's arm in an active experiment."""

    experiment: str
    variant: str
    model: str  # alias (e.g. "challenger") or version number as a string ("7")
    bucket: int

    @property
    def model_version(self) -> int | None:
        """The pinned registered-model version, or None when `model` is an alias."""
        return int(self.model) if self.model.isdigit() else None


@dataclass(frozen=True, slots=True)
class _Compiled:
    """An experiment prepared for the request path: epoch bounds and cumulative bucket bounds."""

    key: str
    salt: str
    start: float
    end: float
    upper: tuple[int, ...]  # exclusive upper bucket of each variant, last == N_BUCKETS
    variants: tuple[str, ...]
    models: tuple[str, ...]


def _compile(exp: ExperimentConfig) -> _Compiled:
    total = sum(v.weight for v in exp.variants)
    upper: list[int] = []
    acc = 0.0
    for v in exp.variants:
        acc += v.weight
        upper.append(round(acc / total * N_BUCKETS))
    upper[-1] = N_BUCKETS  # float rounding must never leave a bucket unowned
    return _Compiled(
        key=exp.key,
        salt=exp.salt,
        start=exp.start.timestamp(),
        end=exp.end.timestamp(),
        upper=tuple(upper),
        variants=tuple(v.name for v in exp.variants),
        models=tuple(v.model for v in exp.variants),
    )


@dataclass(frozen=True)
class _Snapshot:
    config: ExperimentsFile
    by_region: Mapping[str, tuple[_Compiled, ...]]  # sorted by start
    stamp: tuple[int, int]  # (mtime_ns, size) of the file it came from


def _build(config: ExperimentsFile, stamp: tuple[int, int]) -> _Snapshot:
    by_region: dict[str, list[_Compiled]] = {}
    for exp in sorted(config.experiments, key=lambda e: e.start):
        compiled = _compile(exp)
        for region in exp.regions:
            by_region.setdefault(region, []).append(compiled)
    return _Snapshot(config, {r: tuple(v) for r, v in by_region.items()}, stamp)


def _loc(loc: Sequence[int | str], data: object) -> str:
    """Turn a pydantic location into ``experiments[1] (key 'x').variants[0].weight``."""
    out = ""
    node: Any = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            try:
                node = node[part]
            except (IndexError, KeyError, TypeError):
                node = None
            if isinstance(node, Mapping) and out.startswith("experiments") and out.count("[") == 1:
                key = node.get("key")
                if key is not None:
                    out += f" (key {key!r})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, Mapping) else None
    return out or "file"


def parse_experiments(data: object, source: str = "<experiments>") -> ExperimentsFile:
    """Validate parsed YAML (a mapping with ``experiments``, a bare list, or None) into the config model.

    Args:
        data: the output of ``yaml.safe_load``.
        source: file name used in error messages.

    Returns:
        The validated config.

    Raises:
        ExperimentConfigError: naming the file, the experiment and the field that is wrong.
    """
    if data is None:
        data = {"experiments": []}
    elif isinstance(data, list):
        data = {"experiments": data}
    if not isinstance(data, Mapping):
        raise ExperimentConfigError(f"{source}: top level must be a mapping with 'experiments' (or a list)")
    try:
        return ExperimentsFile.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        lines = []
        for err in errors:
            loc = err["loc"]
            # a list whose item failed also reports "too short": the item error is the real one
            if err["type"] == "too_short" and any(
                len(o["loc"]) > len(loc) and o["loc"][: len(loc)] == loc for o in errors
            ):
                continue
            msg = str(err["msg"]).removeprefix("Value error, ")
            value = err.get("input")
            if err["type"] not in ("value_error", "missing") and not isinstance(value, Mapping | list):
                msg += f" (got {value!r})"
            lines.append(f"{_loc(loc, data)}: {msg}")
        raise ExperimentConfigError(f"{source}: " + "; ".join(lines)) from None


def load_experiments(path: Path) -> ExperimentsFile:
    """Read and validate an experiments YAML file.

    Args:
        path: the YAML file.

    Returns:
        The validated config.

    Raises:
        ExperimentConfigError: file missing, not YAML, or breaking a rule.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExperimentConfigError(f"{path}: experiments file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExperimentConfigError(f"{path}: cannot read experiments file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ExperimentConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_experiments(data, str(path))


def _stamp(path: Path) -> tuple[int, int]:
    """(mtime_ns, size): a half-written file and the finished one rarely share both."""
    st = path.stat()
    return st.st_mtime_ns, st.st_size


class ExperimentRegistry:
    """The experiments in force, reloaded when the file changes; answers `assign` from memory.

    Reload: at most every ``check_interval`` seconds, ``assign`` stats the file; if its mtime or size
    changed, the file is re-read. A bad new file never replaces a good config: the old one stays in
    force and the problem is kept in `last_error` (and logged) for the health endpoint.
    """

    def __init__(
        self,
        config: ExperimentsFile | None = None,
        path: Path | None = None,
        check_interval: float = 5.0,
        stamp: tuple[int, int] = (0, 0),
    ) -> None:
        self.path = path
        self.check_interval = check_interval
        self.last_error: str | None = None
        self._snapshot = _build(config or ExperimentsFile(), stamp)
        self._next_check = time.monotonic() + check_interval
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, check_interval: float = 5.0) -> ExperimentRegistry:
        """Load ``path`` (raises `ExperimentConfigError` if it is bad) and watch it for changes.

        Args:
            path: the YAML file.
            check_interval: seconds between mtime checks; 0 checks on every call.

        Returns:
            The registry.
        """
        path = Path(path)
        try:
            stamp = _stamp(path)
        except FileNotFoundError:
            raise ExperimentConfigError(f"{path}: experiments file not found") from None
        return cls(load_experiments(path), path, check_interval, stamp)

    @classmethod
    def empty(cls) -> ExperimentRegistry:
        """A registry with no experiments: everyone gets the champion."""
        return cls()

    @property
    def config(self) -> ExperimentsFile:
        """The config in force."""
        return self._snapshot.config

    @property
    def experiments(self) -> tuple[ExperimentConfig, ...]:
        """The experiments in force, as written in the file."""
        return self._snapshot.config.experiments

    def get(self, key: str) -> ExperimentConfig | None:
        """The experiment with this key, or None."""
        return next((e for e in self.experiments if e.key == key), None)

    def models(self) -> set[str]:
        """Every model reference (alias or version) a variant may need, so the service can preload them."""
        return {v.model for e in self.experiments for v in e.variants}

    def reload_if_changed(self, force: bool = False) -> bool:
        """Re-read the file if its mtime or size changed; True when a new config was installed.

        A missing or invalid file keeps the current config and sets `last_error`.
        """
        if self.path is None:
            return False
        if not self._lock.acquire(blocking=False):
            return False  # another thread is reloading; this request uses the current snapshot
        try:
            self._next_check = time.monotonic() + self.check_interval
            try:
                stamp = _stamp(self.path)
            except OSError as exc:
                self._fail(f"{self.path}: cannot stat experiments file ({exc}); keeping the previous config")
                return False
            if stamp == self._snapshot.stamp and not force:
                return False
            try:
                config = load_experiments(self.path)
            except ExperimentConfigError as exc:
                # remember the stamp so a broken file is not re-parsed on every check
                self._snapshot = _build(self._snapshot.config, stamp)
                self._fail(f"{exc}; keeping the previous config")
                return False
            self._snapshot = _build(config, stamp)
            self.last_error = None
            logger.info("experiments reloaded from %s: %d experiment(s)", self.path, len(config.experiments))
            return True
        finally:
            self._lock.release()

    def _fail(self, message: str) -> None:
        if message != self.last_error:
            logger.warning("%s", message)
        self.last_error = message

    def active(self, region: str, now: datetime | None = None) -> ExperimentConfig | None:
        """The experiment running in ``region`` at ``now`` (default: current time), or None."""
        compiled = self._find(region, self._epoch(now))
        return self.get(compiled.key) if compiled else None

    def assign(self, student_id: str, region: str, now: datetime | None = None) -> Assignment | None:
        """The student's arm, or None (champion, no experiment) when no experiment runs in the region now.

        Args:
            student_id: opaque student id.
            region: the student's region code.
            now: aware datetime (default: current UTC time).

        Returns:
            The assignment, or None.
        """
        if self.path is not None and time.monotonic() >= self._next_check:
            self.reload_if_changed()
        exp = self._find(region, self._epoch(now))
        if exp is None:
            return None
        b = bucket(exp.salt, student_id)
        i = bisect.bisect_right(exp.upper, b)
        return Assignment(exp.key, exp.variants[i], exp.models[i], b)

    @staticmethod
    def _epoch(now: datetime | None) -> float:
        if now is None:
            return time.time()
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware (UTC)")
        return now.timestamp()

    def _find(self, region: str, t: float) -> _Compiled | None:
        for exp in self._snapshot.by_region.get(region, ()):
            if exp.start <= t < exp.end:
                return exp
        return None


def exposure_fields(
    request_id: str,
    student_id: str,
    region: str,
    assignment: Assignment | None,
    model_version: str,
    lecture_ids: Iterable[str],
    shown_at: datetime,
) -> dict[str, str]:
    """The Redis stream fields of one exposure (what the service XADDs; all values are strings).

    The wire format, decoded by ``training.ab.exposures.from_stream_fields``: ``lecture_ids`` is a JSON
    array in rank order; ``shown_at`` is ISO 8601 in UTC; ``experiment`` and ``variant`` are empty strings
    when the student is in no experiment.
    """
    return stamped_exposure(
        answer_exposure(student_id, region, assignment, model_version, lecture_ids), request_id, shown_at
    )


def answer_exposure(
    student_id: str,
    region: str,
    assignment: Assignment | None,
    model_version: str,
    lecture_ids: Iterable[str],
) -> dict[str, str]:
    """The fields of `exposure_fields` that belong to the answer (shared by every request it serves)."""
    return {
        "student_id": student_id,
        "region": region,
        "experiment": assignment.experiment if assignment else "",
        "variant": assignment.variant if assignment else "",
        "model_version": str(model_version),
        # compact UTF-8 JSON, as json.dumps(ensure_ascii=False, separators=(",", ":")) writes it
        "lecture_ids": orjson.dumps(list(lecture_ids)).decode("utf-8"),
    }


def packed_exposure(
    student_id: str, answer: bytes, request_id: str, shown_at: datetime | None = None
) -> streams.PackedRecord:
    """`stamped_exposure` of an answer's fields packed once (`streams.pack_pairs` of `answer_exposure`'s
    items): the record the service's exposure writer appends, built per request from bytes.
    `shown_at` None: now (`_now_text`)."""
    text = _now_text() if shown_at is None else _shown_at_text(shown_at)
    body = b"".join((_REQUEST_ID, streams.bulk(request_id), answer, _SHOWN_AT, streams.bulk(text)))
    return streams.PackedRecord(student_id, EXPOSURE_FIELDS, body)


#: Fields of an exposure record (`exposure_fields`), and the two that each request adds, packed.
EXPOSURE_FIELDS = 8
_REQUEST_ID, _SHOWN_AT = streams.bulk("request_id"), streams.bulk("shown_at")


def stamped_exposure(answer: dict[str, str], request_id: str, shown_at: datetime) -> dict[str, str]:
    """`answer_exposure` fields completed with the request that showed them and when."""
    return {"request_id": request_id, **answer, "shown_at": _shown_at_text(shown_at)}


def _shown_at_text(shown_at: datetime) -> str:
    """An exposure's ``shown_at``: ISO 8601 in UTC to the microsecond."""
    if shown_at.tzinfo is None:
        raise ValueError("shown_at must be timezone-aware (UTC)")
    return shown_at.astimezone(UTC).isoformat(timespec="microseconds")


#: The second `_now_text` last wrote, and its text to that second (one tuple, replaced whole).
_NOW_SECOND: tuple[int, str] = (-1, "")


def _now_text(epoch_ns: int | None = None) -> str:
    """`_shown_at_text` of now (or of `epoch_ns`), the text to the second made once a second: every answer
    stamps its exposure, and `datetime.now` with `isoformat` cost ~6 µs of it on the bench machine."""
    global _NOW_SECOND
    second, micro = divmod((time.time_ns() if epoch_ns is None else epoch_ns) // 1000, 1_000_000)
    known, text = _NOW_SECOND
    if second != known:
        text = datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds").removesuffix("+00:00")
        _NOW_SECOND = (second, text)
    return f"{text}.{micro:06d}+00:00"
