"""Tables -> catalogue, training matrices and scoring batches."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from features.errors import SchemaError
from features.matrices import build_batch, build_catalogue, build_training_data
from features.profile import StudentProfile, from_table
from models.ranking import StudentFeatureEncoder

ALL = ["m1", "m2", "m3", "h1", "h2", "h3", "oos", "adult"]


def lectures() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "lecture_id": ["l1", "l2", "l3", "l4"],
            "title": ["수학 1강", "수학 2강", "영어", "국어"],
            "provider": ["EBS", "EBS", "메가", "메가"],
            "subject": ["수학", "수학", "영어", "국어"],
            "grades": [["h1", "h2"], ["h1"], [], ["m2"]],
            "level": pd.array([1, 2, 2, 3], dtype="int8"),
            "series_id": ["A", "A", "B", "C"],
            "series_position": pd.array([1, 2, 1, 1], dtype="int32"),
            "duration_min": [30.0] * 4,
            "regions": [["*"], ["seoul"], ["gimpo", "incheon"], ["seoul", "nowhere"]],
            "active": [True, True, True, False],
        }
    )


def students() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "student_id": ["s1", "s2", "s3"],
            "region": ["seoul", "gimpo", "seoul"],
            "grade": ["h1", "m2", "h3"],
            "school_level": ["high", None, "high"],
            "target_exam": ["수능", "검정고시", None],
            "interest_subjects": [["수학", "영어"], [], None],
            "support_category": [None, None, None],
            "age_band": ["16-18", "13-15", "16-18"],
        }
    )


def events(rows: list[tuple[str, str, str, float, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["student_id", "lecture_id", "type", "progress", "occurred_at"])
    frame.insert(0, "event_id", [f"e{i}" for i in range(len(frame))])
    frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], utc=True)
    return frame


def test_catalogue_licences_grades_and_features():
    cat = build_catalogue(lectures(), ["seoul", "gimpo"])
    assert cat.regions.ids == ("seoul", "gimpo", "*")
    np.testing.assert_array_equal(cat.licensed.astype(int), [[1, 1, 0, 1], [1, 0, 1, 0], [1, 0, 0, 0]])
    g = cat.grades
    assert cat.suits[g.get("h1")].tolist() == [True, True, True, False]
    assert cat.suits[g.get("m2")].tolist() == [False, False, True, True]  # l3 lists no grade: suits all
    assert cat.suits[:, 2].all()
    assert cat.active.tolist() == [True, True, True, False]
    assert cat.series.tolist() == [0, 0, 1, 2] and cat.series_position.tolist() == [1, 2, 1, 1]
    assert cat.subjects == ("국어", "수학", "영어") and cat.subject.tolist() == [1, 1, 2, 0]
    names = cat.feature_names
    assert "subject=수학" in names and "provider=메가" in names and "level=3" in names
    assert "grade=h2" in names and "series=A" in names
    f = cat.features.toarray()
    assert f.dtype == np.float32 and set(np.unique(f)) <= {0.0, 1.0}
    row1 = {names[j] for j in np.flatnonzero(f[0])}
    assert row1 == {"subject=수학", "provider=EBS", "level=1", "grade=h1", "grade=h2", "series=A"}


def test_catalogue_defaults_for_optional_columns():
    minimal = lectures()[["lecture_id", "title", "provider", "subject"]]
    cat = build_catalogue(minimal, ["seoul"])
    assert cat.licensed.all() and cat.suits.all() and cat.active.all()
    assert len(set(cat.series.tolist())) == 4 and (cat.series_position == 1).all()


def test_duplicate_lecture_ids_name_the_rows():
    table = pd.concat([lectures(), lectures().iloc[[1]]], ignore_index=True)
    with pytest.raises(SchemaError, match=r"lectures: row 4, column 'lecture_id': duplicate lecture_id 'l2'"):
        build_catalogue(table, ["seoul"])


def test_interaction_weights_take_the_furthest_stage():
    ev = events(
        [
            ("s1", "l1", "enrol", 0.0, "2025-01-01"),
            ("s1", "l1", "progress", 0.4, "2025-01-02"),
            ("s1", "l1", "progress", 0.8, "2025-01-03"),  # max progress counts: 0.3 + 0.5 * 0.8
            ("s1", "l2", "enrol", 0.0, "2025-01-02"),  # enrol only
            ("s1", "l3", "enrol", 0.0, "2025-01-02"),
            ("s1", "l3", "complete", 1.0, "2025-01-04"),
            ("s1", "l3", "drop", 0.0, "2025-01-05"),  # completed: a later drop does not undo it
            ("s2", "l3", "enrol", 0.0, "2025-01-01"),
            ("s2", "l3", "progress", 0.9, "2025-01-02"),
            ("s2", "l3", "drop", 0.0, "2025-01-03"),  # dropped last: 0.1
            ("s2", "l1", "enrol", 0.0, "2025-01-01"),
            ("s2", "l1", "drop", 0.0, "2025-01-02"),
            ("s2", "l1", "enrol", 0.0, "2025-01-03"),  # re-enrolled after the drop
        ]
    )
    data = build_training_data(students(), lectures(), ev)
    w = data.interactions.toarray()
    assert data.interactions.dtype == np.float32
    np.testing.assert_allclose(w[0], [0.7, 0.25, 1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(w[1], [0.25, 0.0, 0.1, 0.0], rtol=1e-6)
    assert (w[2] == 0).all()


def test_age_days_sequences_and_as_of():
    ev = events(
        [
            ("s1", "l2", "enrol", 0.0, "2025-01-05"),
            ("s1", "l1", "enrol", 0.0, "2025-01-01"),
            ("s1", "l1", "complete", 1.0, "2025-01-08"),  # later event: age from here, order from enrol
            ("s1", "l3", "enrol", 0.0, "2025-01-10"),  # the latest event: age 0, kept as an explicit entry
            ("s2", "l4", "enrol", 0.0, "2025-02-01"),  # after as_of
        ]
    )
    data = build_training_data(students(), lectures(), ev, as_of=datetime(2025, 1, 10, tzinfo=UTC))
    assert data.sequences[0].tolist() == [0, 1, 2]
    assert data.sequences[1].tolist() == []
    np.testing.assert_allclose(data.age_days.toarray()[0], [2.0, 5.0, 0.0, 0.0])
    np.testing.assert_array_equal(data.age_days.indptr, data.interactions.indptr)
    np.testing.assert_array_equal(data.age_days.indices, data.interactions.indices)
    assert data.interactions[1].nnz == 0
    default = build_training_data(students(), lectures(), ev)  # as_of = latest event
    assert default.age_days[0, 2] == pytest.approx(22.0)


def test_student_map_features_and_codes():
    ev = events([("zz-late", "l1", "enrol", 0.0, "2025-01-01"), ("s1", "l9", "enrol", 0.0, "2025-01-01")])
    data = build_training_data(students(), lectures(), ev)
    assert data.students.ids == ("s1", "s2", "s3", "zz-late")
    assert data.interactions.shape == (4, 4) and data.interactions.nnz == 1  # unknown lecture l9 ignored
    cat = data.catalogue
    assert cat.regions.ids == ("gimpo", "incheon", "nowhere", "seoul", "*")
    assert data.region.tolist() == [
        cat.regions.get("seoul"),
        cat.regions.get("gimpo"),
        cat.regions.get("seoul"),
        -1,
    ]
    assert data.grade.tolist() == [cat.grades.get("h1"), cat.grades.get("m2"), cat.grades.get("h3"), -1]
    names = data.student_feature_names
    assert names[:2] == ("region=gimpo", "region=seoul")
    assert "interest_subjects=영어" in names and "target_exam=검정고시" in names
    assert not any(n.startswith("support_category=") for n in names)
    f = data.student_features.toarray()
    row0 = {names[j] for j in np.flatnonzero(f[0])}
    assert row0 == {
        "region=seoul", "grade=h1", "school_level=high", "target_exam=수능",
        "interest_subjects=수학", "interest_subjects=영어", "age_band=16-18",
    }  # fmt: skip
    assert f[3].sum() == 0


def test_unknown_event_type_names_the_rows():
    ev = events([("s1", "l1", "enrol", 0.0, "2025-01-01"), ("s1", "l1", "watch", 0.0, "2025-01-02")])
    with pytest.raises(SchemaError, match=r"row 1, column 'type': unknown event type 'watch'"):
        build_training_data(students(), lectures(), ev)


def test_missing_required_column_is_named():
    with pytest.raises(SchemaError, match="column 'grade' is missing"):
        build_training_data(students().drop(columns=["grade"]), lectures(), events([]))


def test_batch_matches_training_rows_and_handles_unseen_students():
    ev = events(
        [
            ("s1", "l1", "enrol", 0.0, "2025-01-01"),
            ("s1", "l2", "complete", 1.0, "2025-01-02"),
            ("s2", "l3", "enrol", 0.0, "2025-01-01"),
        ]
    )
    data = build_training_data(students(), lectures(), ev)
    batch = build_batch(data, students().iloc[[1, 0]], ev)
    assert batch.index.tolist() == [1, 0]
    assert (batch.history != data.interactions[[1, 0]]).nnz == 0
    assert (batch.features != data.student_features[[1, 0]]).nnz == 0
    assert [r.tolist() for r in batch.recent] == [data.sequences[1].tolist(), data.sequences[0].tolist()]
    new = pd.DataFrame(
        {"student_id": ["n1", "n2", "n3"], "region": ["taebaek", "seoul", "*"], "grade": ["h9", "h1", "h1"],
         "interest_subjects": [["수학"], None, ["코딩"]]}
    )  # fmt: skip
    cold = build_batch(data, new, events([]))
    assert cold.index.tolist() == [-1, -1, -1]
    assert cold.region.tolist() == [-1, data.catalogue.regions.get("seoul"), -1]
    assert cold.grade.tolist() == [-1, data.catalogue.grades.get("h1"), data.catalogue.grades.get("h1")]
    assert cold.history.shape == (3, 4) and cold.history.nnz == 0
    assert all(r.size == 0 for r in cold.recent)
    names = data.student_feature_names
    assert {names[j] for j in cold.features[0].indices} == {"interest_subjects=수학"}
    assert {names[j] for j in cold.features[1].indices} == {"region=seoul", "grade=h1"}


def test_encoder_matches_batch_features():
    data = build_training_data(students(), lectures(), events([]))
    encoder = StudentFeatureEncoder(data.student_feature_names)
    for row, profile in enumerate(from_table(students())):
        expected = data.student_features[row].indices
        assert encoder.columns(profile.feature_values()).tolist() == sorted(expected.tolist())
    mars = StudentProfile("x", region="mars", grade="h9", interest_subjects=("수학", "수학"))
    assert encoder.columns(mars.feature_values()).size == 1


def test_encoder_remembers_each_distinct_profile():
    """`of_profile` (the request path) answers as `columns`, once per distinct profile, whoever asks."""
    data = build_training_data(students(), lectures(), events([]))
    encoder = StudentFeatureEncoder(data.student_feature_names)
    profiles = list(from_table(students()))
    for profile in profiles:
        assert encoder.of_profile(profile).tolist() == encoder.columns(profile.feature_values()).tolist()
    twin = replace(profiles[0], student_id="another")  # same attributes, another student
    assert encoder.of_profile(twin) is encoder.of_profile(profiles[0])
    other = replace(profiles[0], interest_subjects=("코딩",))
    assert encoder.of_profile(other).tolist() == encoder.columns(other.feature_values()).tolist()
    assert not encoder.of_profile(twin).flags.writeable  # shared between students: read-only
    encoder.MEMO_SIZE = 1  # full: starts over, still right
    third = replace(profiles[0], interest_subjects=("수학", "코딩"))
    assert encoder.of_profile(third).tolist() == encoder.columns(third.feature_values()).tolist()
    assert len(encoder._memo) == 1


def test_integer_ids_in_events_match_string_ids():
    """Regression: events read from CSV can carry integer ids; they must match the string id maps."""
    stu = pd.DataFrame({"student_id": ["1", "2"], "region": ["seoul", "seoul"], "grade": ["h1", "h1"]})
    lec = lectures().assign(lecture_id=["10", "11", "12", "13"])
    ev = events([("1", "10", "enrol", 0.0, "2025-01-01")]).assign(student_id=[1], lecture_id=[10])
    data = build_training_data(stu, lec, ev)
    assert data.students.ids == ("1", "2")
    assert data.interactions[0, 0] == pytest.approx(0.25)
