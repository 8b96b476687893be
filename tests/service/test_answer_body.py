"""A computed answer's JSON body (`answer_tail`) is, byte for byte, what orjson writes for the answer as a
dict in `RecommendationsOut`'s shape, and it validates against that schema: the fragments encoded at load
(`RankingModel.lecture_json`) and per answer (ranks, scores) assemble the same document."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.matrices import build_training_data
from models.popularity import PopularityRecommender
from models.ranking import REASON_TEXT, Ranked, RankingModel
from service.routes.recommendations import answer_tail
from service.schemas import RecommendationsOut
from tests.service import data


@pytest.fixture(scope="module")
def model() -> RankingModel:
    training = build_training_data(
        pd.DataFrame(data.students()), pd.DataFrame(data.lectures()), pd.DataFrame(data.events())
    )
    return RankingModel.from_parts(
        PopularityRecommender().fit(training), data.lectures_table(), None, version="7", run_id=None
    )


def _reference(student_id: str, model: RankingModel, ranked: Ranked, degraded: bool, experiment: Any,
               variant: Any) -> bytes:  # fmt: skip
    """The answer as a dict, dumped whole by orjson (how the body was built before it was assembled)."""
    ids = model.catalogue.lectures.ids
    return orjson.dumps(
        {
            "student_id": student_id,
            "model": {"name": model.model_name, "version": model.version, "alias": model.alias,
                      "run_id": model.run_id},
            "source": ranked.source,
            "fallback": ranked.fallback,
            "degraded": degraded,
            "experiment": experiment,
            "variant": variant,
            "items": [
                {"rank": i, "lecture_id": ids[r], "title": model.titles[r], "subject": model.subject_of[r],
                 "provider": model.providers[r], "score": score, "reason": reason,
                 "reason_text": REASON_TEXT[reason]}
                for i, (r, score, reason) in enumerate(
                    zip(ranked.rows, ranked.scores, ranked.reasons, strict=True), 1
                )
            ],
        }
    )[1:]  # fmt: skip


scores = st.floats(allow_nan=False, allow_infinity=False, width=64) | st.sampled_from(
    [0.0, -0.0, 1.0, 3.0, 1e-7, 1e-5, -2.5e-12, 1e16, 123456789.0, 0.1]
)
labels = st.none() | st.text(min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    picks=st.lists(
        st.tuples(st.integers(0, 10_000), scores, st.sampled_from(sorted(REASON_TEXT))),
        max_size=12,
    ),
    student=st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True),
    source=st.sampled_from(["model", "profile", "history", "popular_region", "popular_global"]),
    flags=st.tuples(st.booleans(), st.booleans()),
    experiment=labels,
    variant=labels,
    alias=st.none() | st.sampled_from(["champion", "challenger", "새 모델"]),
)
def test_assembled_body_is_the_dumped_answer(
    model: RankingModel, picks, student, source, flags, experiment, variant, alias
) -> None:
    m = replace(model, alias=alias)
    rows = [r % m.n_lectures for r, _, _ in picks]
    ranked = Ranked(rows, [s for _, s, _ in picks], [x for _, _, x in picks], source, fallback=flags[0])
    tail = answer_tail(student, m, ranked, flags[1], experiment, variant)
    assert tail == _reference(student, m, ranked, flags[1], experiment, variant)
    body = b'{"request_id":"r-1",' + tail
    answer = RecommendationsOut.model_validate_json(body)
    assert [item.lecture_id for item in answer.items] == [m.catalogue.lectures.ids[r] for r in rows]


def test_korean_text_is_utf8_not_escaped(model: RankingModel) -> None:
    ranked = Ranked([0, 1], [2.0, 1.5], ["next_in_series", "popular_overall"], "model", fallback=False)
    tail = answer_tail("s1", model, ranked, False, "실험", "대조군")
    assert "수학 개념 완성 1강".encode() in tail and "시리즈 다음 강의".encode() in tail
    assert "실험".encode() in tail and b"\\u" not in tail
