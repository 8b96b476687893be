"""Metrics of the hot route: the kept labelled counters count like `labels().inc()` would."""

from __future__ import annotations

from service.metrics import Metrics


def _value(metrics: Metrics, name: str, labels: dict[str, str]) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_count_answer_counts_every_answer_under_its_labels():
    m = Metrics()
    for _ in range(3):
        m.count_answer("model", False, None, None, False, cached=True)
    m.count_answer("model", False, None, None, False, cached=False)
    m.count_answer("popular_region", True, "gimpo-lightfm", "B", True, cached=False)
    m.count_answer("popular_region", True, "gimpo-lightfm", "B", True, cached=True)
    assert _value(m, "learnrec_recommendations_total", {"source": "model"}) == 4
    assert _value(m, "learnrec_recommendations_total", {"source": "popular_region"}) == 2
    assert _value(m, "learnrec_answer_cache_total", {"outcome": "hit"}) == 4
    assert _value(m, "learnrec_answer_cache_total", {"outcome": "miss"}) == 2
    assert _value(m, "learnrec_experiment_answers_total", {"experiment": "none", "variant": "none"}) == 4
    variant_b = {"experiment": "gimpo-lightfm", "variant": "B"}
    assert _value(m, "learnrec_experiment_answers_total", variant_b) == 2
    assert _value(m, "learnrec_experiment_variant_unavailable_total", variant_b) == 2
    assert _value(m, "learnrec_recommendations_fallback_total", {"source": "popular_region"}) == 2
    assert _value(m, "learnrec_recommendations_fallback_total", {"source": "model"}) is None
