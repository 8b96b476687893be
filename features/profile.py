"""The student profile, declared once: the students table, Redis, the API and the model features follow it.

`StudentProfile` is the one declaration. Every attribute but the id is a model feature (one-hot
``name=value`` columns, `models.features.StudentFeatureEncoder`), so `FEATURE_ATTRIBUTES` is derived from
its fields, and so are the students-table columns the encoder reads (`features.matrices`), the JSON kept in
Redis (`to_json` / `from_json`), the rows read from a students table (`from_table`) and the API's
`StudentIn` (`service.schemas`, whose fields a test holds equal to these).
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import orjson

#: Attributes holding several values (multi-hot), stored as JSON lists.
LIST_ATTRIBUTES: frozenset[str] = frozenset({"interest_subjects"})


@dataclass(frozen=True)
class StudentProfile:
    """What the portal tells us about a student (no names, no national ids).

    Attributes:
        student_id: opaque id.
        region: partner region code (``seoul``, ``taebaek``, ...).
        grade: ``m1``-``m3``, ``h1``-``h3``, ``out_of_school`` or ``adult``.
        school_level: ``middle``, ``high`` or ``none``.
        target_exam: the exam the student prepares (수능, 검정고시, ...).
        interest_subjects: subjects the student said they like.
        support_category: why the programme supports the student (`features.schemas.SUPPORT_CATEGORIES`:
            ``basic_livelihood``, ``near_poverty``, ...; OULAD: the deprivation band of the student's area,
            ``imd_band``): a model feature and the equity group of the reports.
        age_band: age band (OULAD's ``age_band``).
    """

    student_id: str
    region: str
    grade: str
    school_level: str | None = None
    target_exam: str | None = None
    interest_subjects: tuple[str, ...] = ()
    support_category: str | None = None
    age_band: str | None = None

    def feature_values(self) -> Iterator[tuple[str, str]]:
        """(attribute, value) for every attribute given: what the feature encoder one-hots."""
        for name in FEATURE_ATTRIBUTES:
            value = getattr(self, name)
            if name in LIST_ATTRIBUTES:
                yield from ((name, str(v)) for v in value)
            elif value is not None:
                yield name, str(value)

    @property
    def feature_key(self) -> tuple[Any, ...]:
        """The feature attributes' values as one tuple (equal profiles, equal keys): what the ranking's
        encoder remembers a profile's columns under (`models.ranking.StudentFeatureEncoder.of_profile`)."""
        return _feature_key(self)

    def to_json(self) -> bytes:
        """The Redis record: UTF-8 JSON of the attributes given (the id is in the key).

        Raises:
            ValueError: the id, region or grade is missing or not a string.
        """
        if not self.student_id or not isinstance(self.student_id, str):
            raise ValueError(f"profile: student_id must be a non-empty string, got {self.student_id!r}")
        for name in ("region", "grade"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"profile of {self.student_id!r}: {name} must be a non-empty string")
        record: dict[str, Any] = {}
        for name in FEATURE_ATTRIBUTES:
            value = getattr(self, name)
            if name in LIST_ATTRIBUTES:
                if value:
                    record[name] = list(value)
            elif value is not None:
                record[name] = value
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, student_id: str, raw: bytes | str) -> StudentProfile:
        """Inverse of `to_json`.

        Raises:
            ValueError, KeyError, TypeError: the record is not a profile.
        """
        record = orjson.loads(raw)  # read on every computed answer; orjson's errors are ValueErrors
        if not isinstance(record, dict):
            raise TypeError(f"expected a JSON object, got {type(record).__name__}")
        return cls.from_mapping(student_id, record)

    @classmethod
    def from_mapping(cls, student_id: str, values: Any) -> StudentProfile:
        """A profile from any mapping with the attribute names (missing optional ones: not given).

        Raises:
            KeyError: region or grade is missing.
        """
        kwargs: dict[str, Any] = {"student_id": str(student_id)}
        for name in FEATURE_ATTRIBUTES:
            value = values[name] if name in ("region", "grade") else values.get(name)
            if name in LIST_ATTRIBUTES:
                kwargs[name] = tuple(str(v) for v in value) if _present_list(value) else ()
            elif name in ("region", "grade"):
                kwargs[name] = str(value)
            else:
                kwargs[name] = str(value) if isinstance(value, str) and value else None
        return cls(**kwargs)


#: The profile attributes that are model features, in the encoder's column order.
FEATURE_ATTRIBUTES: tuple[str, ...] = tuple(f.name for f in fields(StudentProfile) if f.name != "student_id")
_feature_key = operator.attrgetter(*FEATURE_ATTRIBUTES)


def _present_list(value: Any) -> bool:
    if value is None or isinstance(value, str | bytes | float):
        return False
    try:
        return len(value) > 0
    except TypeError:
        return False


def from_table(students: Any) -> Iterable[StudentProfile]:
    """The profiles of a students table (`features.schemas.STUDENTS` columns; absent optional ones: none).

    Args:
        students: a pandas DataFrame of students.

    Yields:
        One profile per row, in table order.
    """
    columns = [c for c in FEATURE_ATTRIBUTES if c in students.columns]
    ids = students["student_id"].astype(str).tolist()
    values = [students[c].tolist() for c in columns]
    for i, sid in enumerate(ids):
        yield StudentProfile.from_mapping(sid, {c: v[i] for c, v in zip(columns, values, strict=True)})
