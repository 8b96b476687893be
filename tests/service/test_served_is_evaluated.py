"""The list a student is shown is the list the offline evaluation scores (one ranking path).

The session's registry holds versions fitted by `learnrec train` on the training side of the default
temporal split. Redis is seeded with that training side (the state at the cutoff), the champion's
per-student state is materialised, and a sample of the split's test students is asked over real HTTP,
for the champion and for an A/B variant's model; the answers must be the lists `training.evaluate`
scored for the same students: the same lectures in the same order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from features.profile import from_table
from features.store import FeatureStore
from features.tables import read_dataset
from models.loading import load_registered
from models.ranking import RankingModel
from tests.conftest import RedisServerControl
from tests.service.conftest import PORTAL, Registry, answer, running, service_settings
from training.evaluate import evaluate, served_lists
from training.splits import Split, make_split

K = 10
SAMPLE = 40


@pytest.fixture(scope="module")
def split(registry: Registry) -> tuple[Any, Split]:
    """The dataset and the split `learnrec train` fitted the registered versions on (its defaults)."""
    ds = read_dataset(registry.root / "data" / "datasets" / "synthetic")
    return ds, make_split("temporal", ds)


@pytest.fixture(scope="module")
def served(
    registry: Registry,
    redis_server: RedisServerControl,
    split: tuple[Any, Split],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[httpx.Client, Path]]:
    """A live service on the state at the split's cutoff, the champion's state materialised."""
    from training.commands.feature_store import materialize_loaded

    ds, sp = split
    if not redis_server.running:
        redis_server.start()
    redis_server.client().flushall()
    store = FeatureStore(redis_server.client())
    store.seed_history(sp.train.events, from_table(ds.students))
    champion = load_registered("learnrec-lectures", registry.versions["sequence"], registry.tracking_uri)
    materialize_loaded(champion, redis_server.client())
    path = tmp_path_factory.mktemp("served") / "experiments.yaml"
    path.write_text("experiments: []\n", encoding="utf-8")
    with running(service_settings(registry, redis_server.url, experiments_file=path)) as (_, client, _logs):
        yield client, path


def _write_experiment(path: Path, regions: list[str], model: str) -> None:
    experiment = {
        "key": "served-parity",
        "regions": regions,
        "start": "2020-01-01T00:00:00Z",
        "end": "2100-01-01T00:00:00Z",
        # both arms on the variant's model: every student is answered by it, as an A/B variant
        "variants": [
            {"name": "control", "weight": 50, "model": model},
            {"name": "treatment", "weight": 50, "model": model},
        ],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"experiments": [experiment]}), encoding="utf-8")
    os.replace(tmp, path)


def _asked(client: httpx.Client, students: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for sid in students:
        r = client.get("/recommendations", params={"student_id": sid, "k": K}, headers=PORTAL)
        out[sid] = answer(r)
    return out


def test_the_champion_serves_the_lists_the_evaluation_scores(
    registry: Registry, split: tuple[Any, Split], served: tuple[httpx.Client, Path]
) -> None:
    ds, sp = split
    client, _ = served
    students = list(sp.test_students[:SAMPLE])
    assert len(students) >= 10
    ranker = RankingModel.prepare(load_registered("learnrec-lectures", "champion", registry.tracking_uri))
    offline = served_lists(ranker, sp, ds, students, K)
    online = _asked(client, students)
    for sid in students:
        body = online[sid]
        assert body["model"]["version"] == registry.versions["sequence"], body["model"]
        assert [item["lecture_id"] for item in body["items"]] == offline[sid], sid
    # series slots and model scores both appear: the comparison covers the serving rules
    reasons = {item["reason"] for body in online.values() for item in body["items"]}
    assert "next_in_series" in reasons and "similar_students" in reasons
    # the service answered from the materialised candidate lists (stage 2 of `models.candidates`), the
    # evaluation from lists it built itself: the same lists
    stored = re.search(r'learnrec_candidates_total\{outcome="stored"\} (\d+)', client.get("/metrics").text)
    assert stored is not None and int(float(stored.group(1))) >= len(students) // 2
    # and the evaluation's primary figures are computed from those very lists
    report = evaluate(ranker, sp, ds, (K,))
    assert report.ranking == "served" and report.raw


def test_an_ab_variant_serves_the_lists_the_evaluation_scores(
    registry: Registry,
    redis_server: RedisServerControl,
    split: tuple[Any, Split],
    served: tuple[httpx.Client, Path],
    tmp_path: Path,
) -> None:
    ds, sp = split
    regions = sorted(ds.students["region"].astype(str).unique().tolist())
    variant = registry.versions["lightfm"]
    path = tmp_path / "experiments.yaml"
    _write_experiment(path, regions, variant)
    students = list(sp.test_students[:SAMPLE])
    ranker = RankingModel.prepare(load_registered("learnrec-lectures", variant, registry.tracking_uri))
    offline = served_lists(ranker, sp, ds, students, K)
    with running(service_settings(registry, redis_server.url, experiments_file=path)) as (_, client, _logs):
        online = _asked(client, students)
    for sid in students:
        body = online[sid]
        assert body["experiment"] == "served-parity" and body["model"]["version"] == variant, body
        assert [item["lecture_id"] for item in body["items"]] == offline[sid], sid
