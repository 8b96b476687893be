"""Two-stage ranking: a candidate list per student built offline, and what follows each lecture.

Why: scoring every lecture of the catalogue for every computed answer cost about 0.3 ms of the one
core (the model's scores and the top-k over 5,000 lectures), most of a computed answer's budget. The
served list needs only the k best eligible lectures, and a student's scores change slowly, so:

* **Stage 1, offline** (`learnrec features materialize`, and in process for a student with no stored
  list): the model scores the whole catalogue once and keeps the `CANDIDATES` best lectures the student
  may be shown at that moment (active, licensed in the student's region, suited to the grade, not in
  the history), best first, with their scores, the student's region and grade and the lectures they had
  most recently enrolled in (the list's *basis*). The list rides in the model version's per-student key
  (`features.store.FeatureStore.materialize`), after the model's state, so it is read in the request's
  one round trip at no extra command.
* **Stage 2, online** (`models.ranking.RankingModel.rank_many`): the stored list, filtered by the
  request's fresh eligibility (a lecture taken a second ago is gone, the series slots and the subject are
  taken out), gives the top k. When the student enrolled in lectures since the list was built, the
  lectures that follow those ("followers": the model's best lectures for a student who took just that
  one, `Followers`) are merged in (`fuse`).

What is served is what is evaluated: the offline evaluation has no stored lists, so it builds each one
from the evaluated state and runs the same stage 2 (`models.ranking`), and with a list built from the
current state, stage 2 gives exactly the full ranking's lectures (same order, same tie rule) whenever at
least k candidates survive the filters. When fewer survive (a narrow subject, more than `CANDIDATES`
lectures taken since the list was built) the list is *exhausted*: the answer is ranked over the whole
catalogue instead, and counted (``learnrec_candidates_total{outcome="exhausted"}``).

`CANDIDATES` = 100: the bench and the portal ask k = 10, and a list of 100 leaves room for 90 lectures
taken or filtered out before it runs short; k up to 100 (`K_MAX`) still gets an exact answer through
the exhaustion fallback. The list costs 8 bytes a candidate (row and score), about 0.9 kB a student
with its header and basis.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from models.eligibility import top_k
from models.stage_two import merge_followers, rows_within

if TYPE_CHECKING:
    from models.base import Recommender

#: Lectures kept per student by stage 1.
CANDIDATES = 100
#: Lectures kept per lecture as what follows it.
FOLLOWERS = 20
#: Most of the lectures enrolled since the list was built whose followers are merged (the latest ones).
FOLLOW_LOOKBACK = 3
#: First int32 of a stored candidate section ("LRC1"): tells it from a model state of another width.
MAGIC = 0x3143524C
#: Header int32s: magic, region, grade, candidates, basis length, complete (1: every eligible lecture).
_HEADER = 6
_MAGIC_BYTES = struct.pack("<i", MAGIC)
#: Students per scoring call when building the followers (bounded memory: chunk x lectures floats).
FOLLOWER_CHUNK = 256


@dataclass(frozen=True, eq=False)
class Candidates:
    """One student's stage-1 list.

    Attributes:
        region: the region row it was built for (-1 unknown).
        grade: the grade row it was built for (-1 unknown).
        rows: lecture rows, best first (score descending, then row).
        scores: the model's scores of `rows`.
        basis: the lectures most recently enrolled in when it was built (oldest first).
        complete: every lecture eligible when it was built is in `rows` (fewer than `CANDIDATES`).
    """

    region: int
    grade: int
    rows: npt.NDArray[np.int32]
    scores: npt.NDArray[np.float32]
    basis: npt.NDArray[np.int32]
    complete: bool

    def to_bytes(self) -> bytes:
        """The stored form: little-endian int32 header, rows, float32 scores, int32 basis."""
        n, b = int(self.rows.size), int(self.basis.size)
        header = np.array([MAGIC, self.region, self.grade, n, b, int(self.complete)], dtype="<i4")
        return b"".join(
            (
                header.tobytes(),
                self.rows.astype("<i4", copy=False).tobytes(),
                self.scores.astype("<f4", copy=False).tobytes(),
                self.basis.astype("<i4", copy=False).tobytes(),
            )
        )

    @classmethod
    def from_bytes(cls, raw: bytes, n_lectures: int) -> Candidates | None:
        """The list stored in `raw`; None when `raw` is not a well-formed list for `n_lectures` lectures
        (another format or a corrupt value: the caller builds the list instead)."""
        if len(raw) < 4 * _HEADER or len(raw) % 4:
            return None
        magic, region, grade, n, b, complete = struct.unpack_from(f"<{_HEADER}i", raw)
        if magic != MAGIC or n < 0 or b < 0 or len(raw) != 4 * (_HEADER + 2 * n + b):
            return None
        body = np.frombuffer(raw, "<u4", offset=4 * _HEADER)
        if not rows_within(body, n, b, n_lectures):
            return None
        return cls(
            region,
            grade,
            body[:n].view("<i4"),
            body[n : 2 * n].view("<f4"),
            body[2 * n :].view("<i4"),
            bool(complete),
        )


def split(raw: bytes | None, state_width: int) -> tuple[bytes | None, bytes | None]:
    """A model version's per-student value in its two parts: the model's state (`state_width` float32s,
    little-endian) and the candidate section after it (`Candidates.to_bytes`), as
    `features.store.FeatureStore.materialize` writes them.

    Args:
        raw: the stored value (None: nothing stored).
        state_width: float32 values of the model's state (0: the value is the candidate section alone).

    Returns:
        (state, section), each None when absent; (None, None) when `raw` is not of this layout (shorter
        than the state, or followed by something that is not a candidate section: another version's).
    """
    if not raw:
        return None, None
    offset = 4 * state_width
    if len(raw) < offset or (len(raw) > offset and raw[offset : offset + 4] != _MAGIC_BYTES):
        return None, None
    return (raw[:offset] if state_width else None), (raw[offset:] if len(raw) > offset else None)


def build(
    scores: npt.NDArray[np.float32],
    mask: npt.NDArray[np.bool_],
    region: int,
    grade: int,
    basis: npt.NDArray[np.int32],
    size: int = CANDIDATES,
) -> Candidates:
    """Stage 1 of one student: the `size` best lectures of `mask` by `scores` (`top_k`'s order).

    Args:
        scores: the model's scores over the catalogue.
        mask: the lectures the student may be shown now (eligibility and history; no subject, no
            series slots: those are the request's).
        region: the student's region row (-1 unknown).
        grade: the student's grade row (-1 unknown).
        basis: the lectures the student most recently enrolled in (oldest first).
        size: list length.

    Returns:
        The list.
    """
    rows, best = top_k(scores[None, :], mask[None, :], size)
    keep = rows[0] >= 0
    picked = rows[0][keep]
    return Candidates(
        region, grade, picked, best[0][keep], np.asarray(basis, dtype=np.int32), bool(picked.size < size)
    )


@dataclass(frozen=True, eq=False)
class Followers:
    """Per lecture, the lectures the model ranks best for a student who took only that one.

    Attributes:
        rows: (n_lectures, FOLLOWERS) int32, best first; -1 pads a short list.
        scores: (n_lectures, FOLLOWERS) float32 scores of `rows` (-inf for padding).
    """

    rows: npt.NDArray[np.int32]
    scores: npt.NDArray[np.float32]


def build_followers(
    recommender: Recommender, size: int = FOLLOWERS, chunk: int = FOLLOWER_CHUNK
) -> Followers:
    """What follows each lecture: the model's scores for a student whose whole history is that lecture
    (unknown region and grade, no profile), the lecture itself and inactive lectures left out.

    Args:
        recommender: the fitted model.
        size: followers per lecture.
        chunk: lectures scored per call.

    Returns:
        The followers of every lecture.
    """
    from models.base import StudentBatch

    cat = recommender.catalogue
    n = len(cat.lectures)
    n_features = len(recommender.student_feature_names)
    rows = np.full((n, size), -1, dtype=np.int32)
    scores = np.full((n, size), -np.inf, dtype=np.float32)
    for start in range(0, n, chunk):
        lectures = np.arange(start, min(start + chunk, n), dtype=np.int32)
        b = lectures.size
        one = np.ones(b, dtype=np.float32)
        batch = StudentBatch(
            index=np.full(b, -1, dtype=np.int32),
            history=sp.csr_matrix((one, (np.arange(b), lectures)), shape=(b, n)),
            recent=tuple(np.array([r], dtype=np.int32) for r in lectures),
            features=sp.csr_matrix((b, n_features), dtype=np.float32),
            region=np.full(b, -1, dtype=np.int32),
            grade=np.full(b, -1, dtype=np.int32),
        )
        mask = np.repeat(cat.active[None, :], b, axis=0)
        mask[np.arange(b), lectures] = False
        rows[lectures], scores[lectures] = top_k(np.asarray(recommender.score(batch), np.float32), mask, size)
    rows.setflags(write=False)
    scores.setflags(write=False)
    return Followers(rows, scores)


def fuse(
    candidates: Candidates, followers: Followers, taken: list[int]
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    """The candidates with the followers of lectures `taken` since the list was built, best first.

    A lecture's merged score is its candidate score plus its follower score under each taken lecture
    (the model's score of a history grows with each lecture taken: exactly so for EASE's ``history @ B``,
    approximately for the others). A lecture missing from a list counts that list's last score, the most
    it can have scored there (the threshold of Fagin's algorithm).

    Args:
        candidates: the stored list.
        followers: the model's followers.
        taken: lecture rows enrolled in since the list was built, at most `FOLLOW_LOOKBACK`.

    Returns:
        (rows, scores), best first (score descending, then row).
    """
    return merge_followers(
        candidates.rows, candidates.scores, followers.rows, followers.scores, np.array(taken, dtype=np.int32)
    )
