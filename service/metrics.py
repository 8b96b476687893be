"""Prometheus metrics of one app instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: Latency buckets (seconds) around the < 50 ms target of /recommendations.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Every metric the service exports."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._answer_counters: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._candidate_counters: dict[str, Any] = {}
        r = self.registry
        self.request_latency = Histogram(
            "learnrec_request_duration_seconds",
            "Time to answer an HTTP request, by route template, method and status.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.recommendations = Counter(
            "learnrec_recommendations_total",
            "Recommendation answers, by source (model, profile, popular_region, popular_global ...).",
            ["source"],
            registry=r,
        )
        self.fallback = Counter(
            "learnrec_recommendations_fallback_total",
            "Answers for students the model never saw (profile features or popularity lists).",
            ["source"],
            registry=r,
        )
        self.degraded = Counter(
            "learnrec_recommendations_degraded_total",
            "Answers given without the feature store (Redis down or slow).",
            registry=r,
        )
        self.answer_cache = Counter(
            "learnrec_answer_cache_total",
            "Recommendation answers by answer-cache outcome (hit: kept answer; miss: read Redis and ranked).",
            ["outcome"],
            registry=r,
        )
        self.candidates = Counter(
            "learnrec_candidates_total",
            "Computed model answers by how the list was made (models.candidates): stored (the materialised "
            "candidate list), fused (it and the followers of lectures taken since), built (no stored list: "
            "built from the full scores), exhausted (too few candidates left: ranked over the catalogue).",
            ["outcome"],
            registry=r,
        )
        self.answer_cache_entries = Gauge(
            "learnrec_answer_cache_students",
            "Students with answers in the answer cache.",
            registry=r,
        )
        self.answer_cache_live = Gauge(
            "learnrec_answer_cache_live",
            "1 while Redis reports key changes and the answer cache is in use, else 0.",
            registry=r,
        )
        self.redis_errors = Counter(
            "learnrec_redis_errors_total",
            "Feature-store calls that failed or timed out, by operation.",
            ["operation"],
            registry=r,
        )
        self.events = Counter(
            "learnrec_events_total",
            "Events received, by outcome (accepted, duplicate, rejected).",
            ["status"],
            registry=r,
        )
        self.model_info = Gauge(
            "learnrec_model_info",
            "The model version being served (value 1).",
            ["model", "version", "alias", "run_id"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "learnrec_model_loaded", "1 when a model version is loaded and serving.", registry=r
        )
        self.model_reloads = Counter(
            "learnrec_model_reloads_total", "Model versions loaded and swapped in.", registry=r
        )
        self.model_reload_failures = Counter(
            "learnrec_model_reload_failures_total",
            "Model versions that failed to load (the previous one kept serving), by reason.",
            ["reason"],
            registry=r,
        )
        self.model_errors = Counter(
            "learnrec_model_score_errors_total",
            "Requests where the model failed to score and popularity lists answered instead.",
            registry=r,
        )
        self.redis_up = Gauge(
            "learnrec_redis_up", "1 when the last feature-store call succeeded.", registry=r
        )

        self.exposures = Counter(
            "learnrec_exposures_total",
            "Exposures (answers shown) by outcome: written to the Redis stream, or dropped (queue full, "
            "Redis down too long).",
            ["outcome"],
            registry=r,
        )
        self.exposure_queue = Gauge(
            "learnrec_exposure_queue_depth", "Exposures waiting to be written to Redis.", registry=r
        )
        self.assignments = Counter(
            "learnrec_experiment_answers_total",
            "Recommendation answers by experiment and variant (none/none = no experiment, champion).",
            ["experiment", "variant"],
            registry=r,
        )
        self.variant_fallback = Counter(
            "learnrec_experiment_variant_unavailable_total",
            "Answers whose variant's model was not loaded: the champion answered (variant still recorded).",
            ["experiment", "variant"],
            registry=r,
        )
        self.variant_models = Gauge(
            "learnrec_variant_model_info",
            "Model versions loaded for experiment variants (value 1), by reference (alias or version).",
            ["model", "ref", "version"],
            registry=r,
        )
        self.experiments_reload_failures = Counter(
            "learnrec_experiments_reload_failures_total",
            "Changes of the experiments file refused (missing or invalid); the previous config stays.",
            registry=r,
        )

    def count_answer(
        self,
        source: str,
        fallback: bool,
        experiment: str | None,
        variant: str | None,
        variant_fell_back: bool,
        cached: bool,
    ) -> None:
        """Count one recommendation answer: by source, as a fallback, by experiment variant (and when the
        variant's model was missing), by answer-cache outcome.

        On every request, so the labelled counters are looked up once per combination (a handful: sources
        x variants x hit/miss) and kept: `labels()` costs more than the increments together.
        """
        key = (source, fallback, experiment, variant, variant_fell_back, cached)
        counters = self._answer_counters.get(key)
        if counters is None:
            counters = (
                self.recommendations.labels(source=source),
                self.assignments.labels(experiment=experiment or "none", variant=variant or "none"),
                self.answer_cache.labels(outcome="hit" if cached else "miss"),
            )
            if fallback:
                counters += (self.fallback.labels(source=source),)
            if variant_fell_back and experiment is not None and variant is not None:
                counters += (self.variant_fallback.labels(experiment=experiment, variant=variant),)
            self._answer_counters[key] = counters
        for counter in counters:
            counter.inc()

    def count_candidates(self, outcome: str) -> None:
        """Count one computed model answer by how its list was made (`learnrec_candidates_total`), with
        the labelled counter looked up once per outcome (as `count_answer` does)."""
        counter = self._candidate_counters.get(outcome)
        if counter is None:
            counter = self._candidate_counters[outcome] = self.candidates.labels(outcome=outcome)
        counter.inc()

    def set_model(self, model: str, version: str, alias: str, run_id: str) -> None:
        """Point the info gauge at the version now serving (only one series at value 1)."""
        self.model_info.clear()
        self.model_info.labels(model=model, version=version, alias=alias, run_id=run_id).set(1)
        self.model_loaded.set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
