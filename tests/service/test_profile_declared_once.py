"""The student profile is declared once: every model feature of the students table can be set through the API.

Regression: OULAD's deprivation band (now `support_category`) and `age_band` were model features (students
table, encoder) that `PUT /students` could not carry, so a student registered through the API was scored
without them.
"""

from __future__ import annotations

from typing import Any

import httpx

from features.profile import FEATURE_ATTRIBUTES, StudentProfile
from features.schemas import STUDENTS
from features.store import FeatureStore
from service.schemas import StudentIn
from tests.conftest import RedisServerControl
from tests.service.conftest import PORTAL


def test_every_students_table_feature_is_a_profile_attribute_and_an_api_field() -> None:
    import pandas as pd

    from features.matrices import build_training_data

    # a students table with every column given: the columns training turns into features ...
    row: dict[str, Any] = dict.fromkeys(STUDENTS.names, "x")
    row.update(student_id="s1", region="seoul", grade="h1", interest_subjects=["수학"])
    lectures = pd.DataFrame({"lecture_id": ["l1"], "title": ["t"], "provider": ["p"], "subject": ["수학"]})
    events = pd.DataFrame(columns=["student_id", "lecture_id", "type", "occurred_at"])
    data = build_training_data(pd.DataFrame([row]), lectures, events)
    used = {name.split("=", 1)[0] for name in data.student_feature_names}
    assert used == set(STUDENTS.names) - {"student_id"}
    # ... are the profile's attributes, and each can be set through PUT /students
    assert used <= set(FEATURE_ATTRIBUTES), "a model feature the profile does not declare"
    missing = [name for name in FEATURE_ATTRIBUTES if name not in StudentIn.model_fields]
    assert not missing, f"model features that PUT /students cannot set: {missing}"


def test_every_attribute_flows_from_the_api_through_redis_to_the_encoder(
    client: httpx.Client, redis_server: RedisServerControl
) -> None:
    body: dict[str, Any] = {
        "region": "seoul",
        "grade": "h2",
        "school_level": "high",
        "target_exam": "수능",
        "interest_subjects": ["수학", "영어"],
        "support_category": "basic_livelihood",
        "age_band": "0-35",
    }
    assert set(body) == set(FEATURE_ATTRIBUTES)  # the body sets every attribute the profile declares
    r = client.put("/students/p-declared-once", json=body, headers=PORTAL)
    assert r.status_code == 200, r.text
    got = client.get("/students/p-declared-once", headers=PORTAL)
    assert got.status_code == 200 and {k: got.json()[k] for k in body} == body
    stored = FeatureStore(redis_server.client()).get_profile("p-declared-once")
    assert stored == StudentProfile.from_mapping("p-declared-once", body)
    values = set(stored.feature_values()) if stored else set()
    assert {
        ("support_category", "basic_livelihood"),
        ("age_band", "0-35"),
        ("interest_subjects", "영어"),
    } <= values
