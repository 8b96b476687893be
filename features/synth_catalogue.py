"""The synthetic lecture catalogue: providers, courses, series of ordered episodes, licences, titles.

A catalogue is a list of series (one provider, subject, course, track, level, grade band and licence
each) of 5-30 episodes. Series are drawn by school segment (middle school, high school, 검정고시 for
out-of-school youth), then provider, subject (국어, 수학, 영어 biggest), course and track. Each episode is
one lecture titled like ``[EBS] 고2 수학Ⅰ 개념완성 3강: 지수함수``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from features.ground_truth import LATENT_DIM, SUBJECT_SHARES, SUBJECTS, TRACKS, IdFormat, LectureTraits
from features.schemas import ALL_REGIONS, GRADE_LABELS_KO, GRADES, LECTURES

SEGMENTS: tuple[str, ...] = ("middle", "high", "ged")
SEGMENT_SHARES: tuple[float, ...] = (0.36, 0.57, 0.07)


@dataclass(frozen=True)
class Provider:
    """A content provider: which segments it serves, where it is licensed, how popular it is."""

    name: str
    weight: float
    segments: tuple[str, ...]
    regions: tuple[str, ...]  # ("*",) = licensed everywhere
    popularity: float
    minutes: float  # typical episode length


PROVIDERS: tuple[Provider, ...] = (
    Provider("EBS", 0.20, ("middle", "high", "ged"), (ALL_REGIONS,), 0.0, 27.0),
    Provider("메가스터디", 0.15, ("high",), (ALL_REGIONS,), 0.35, 45.0),
    Provider("이투스", 0.10, ("high",), (ALL_REGIONS,), 0.1, 42.0),
    Provider("대성마이맥", 0.08, ("high",), ("seoul", "incheon"), 0.25, 45.0),
    Provider("강남인강", 0.10, ("middle", "high", "ged"), (ALL_REGIONS,), -0.2, 35.0),
    Provider("수박씨닷컴", 0.10, ("middle",), (ALL_REGIONS,), 0.0, 30.0),
    Provider("엠베스트", 0.12, ("middle",), (ALL_REGIONS,), 0.2, 32.0),
    Provider("밀크T", 0.08, ("middle",), ("seoul", "chungbuk", "gimpo"), 0.05, 25.0),
    Provider("스카이에듀", 0.06, ("high",), ("seoul",), 0.1, 44.0),
)
PROVIDER_NAMES: tuple[str, ...] = tuple(p.name for p in PROVIDERS)

_GENERIC_UNITS = ("개념 정리", "핵심 유형", "기출 분석", "실전 문제", "오답 노트", "총정리")
#: Middle-school units per subject (a middle course runs through them for its grade).
_MIDDLE_UNITS: dict[str, tuple[str, ...]] = {
    "국어": ("비유와 상징", "설명하는 글", "논설문 읽기", "시의 운율", "소설의 시점", "품사의 이해",
            "문장 성분", "음운의 변동", "매체 읽기", "토론과 협상"),
    "수학": ("정수와 유리수", "문자와 식", "일차방정식", "좌표평면과 그래프", "기본 도형", "평면도형",
            "입체도형", "통계", "유리수와 순환소수", "식의 계산", "일차부등식", "연립방정식", "일차함수",
            "도형의 성질", "확률", "제곱근과 실수", "다항식의 곱셈", "인수분해", "이차방정식", "이차함수",
            "삼각비", "원의 성질"),
    "영어": ("be동사와 일반동사", "시제", "조동사", "to부정사", "동명사", "비교급과 최상급", "관계대명사",
            "수동태", "현재완료", "독해 전략", "듣기 전략"),
    "사회": ("지역의 위치와 인간 생활", "기후와 생활", "자연재해", "문화의 이해", "정치와 민주주의",
            "경제 생활", "인권과 헌법", "국제 사회"),
    "과학": ("힘과 운동", "빛과 파동", "물질의 구성", "생물의 다양성", "전기와 자기", "화학 반응의 규칙",
            "태양계", "생식과 유전", "에너지 전환"),
    "한국사": ("선사 시대", "고조선과 여러 나라", "삼국의 성립", "통일 신라와 발해", "고려의 성립",
              "조선의 건국", "조선 후기 사회", "근대 국가 수립 운동", "일제 강점기", "대한민국의 발전"),
    "정보": ("컴퓨팅 사고", "알고리즘", "파이썬 기초", "자료와 정보", "프로그래밍 실습"),
    "제2외국어": ("히라가나", "일본어 기초 문형", "중국어 발음", "중국어 기초 회화"),
    "진로": ("나의 흥미 찾기", "직업 세계 탐색", "학과 탐색", "진로 계획"),
}  # fmt: skip
_MIDDLE_COURSE = {"한국사": "역사"}


@dataclass(frozen=True)
class Course:
    """A high-school course: its name, whether it is a first-year common course, its units."""

    name: str
    common: bool  # first-year common course (h1); otherwise h2/h3 and 수능 subjects
    units: tuple[str, ...] = _GENERIC_UNITS


#: High-school courses per subject in curriculum order.
_HIGH_COURSES: dict[str, tuple[Course, ...]] = {
    "국어": (
        Course("국어", True, ("문학의 갈래", "비문학 독해", "문법 기초", "화법과 작문 기초", "매체")),
        Course("문학", False, ("현대시", "현대소설", "고전시가", "고전산문", "수필과 극")),
        Course("독서", False, ("인문 지문", "사회 지문", "과학 지문", "기술 지문", "예술 지문")),
        Course("언어와 매체", False, ("음운", "단어", "문장", "담화", "매체 언어")),
        Course("화법과 작문", False, ("화법의 원리", "작문의 원리", "토론", "협상")),
    ),
    "수학": (
        Course("수학(상)", True, ("다항식의 연산", "나머지정리", "인수분해", "복소수", "이차방정식",
                                 "이차함수", "여러 가지 방정식", "부등식", "평면좌표", "직선의 방정식",
                                 "원의 방정식", "도형의 이동")),
        Course("수학(하)", True, ("집합", "명제", "함수", "합성함수와 역함수", "유리함수", "무리함수",
                                 "경우의 수", "순열과 조합")),
        Course("수학Ⅰ", False, ("지수", "로그", "지수함수", "로그함수", "삼각함수", "사인법칙과 코사인법칙",
                               "등차수열", "등비수열", "수열의 합", "수학적 귀납법")),
        Course("수학Ⅱ", False, ("함수의 극한", "함수의 연속", "미분계수", "도함수", "도함수의 활용",
                               "부정적분", "정적분", "정적분의 활용")),
        Course("미적분", False, ("수열의 극한", "급수", "여러 가지 함수의 미분", "여러 가지 미분법",
                               "도함수의 활용", "여러 가지 적분법", "정적분의 활용")),
        Course("확률과 통계", False, ("여러 가지 순열", "중복조합", "이항정리", "확률의 뜻", "조건부확률",
                                   "확률분포", "통계적 추정")),
        Course("기하", False, ("이차곡선", "평면벡터", "공간도형", "공간좌표")),
    ),
    "영어": (
        Course("영어", True, ("문법 총정리", "구문 독해", "어휘", "듣기")),
        Course("영어Ⅰ", False, ("주제 찾기", "요지 파악", "빈칸 추론", "순서 배열", "문장 삽입", "어법")),
        Course("영어Ⅱ", False, ("장문 독해", "요약문 완성", "무관한 문장", "어휘 추론")),
        Course("영어 독해와 작문", False, ("논리적 글 읽기", "영작 기초", "요약하기", "에세이 쓰기")),
    ),
    "사회": (
        Course("통합사회", True, ("인간과 환경", "인권", "시장 경제", "정의", "문화와 다양성", "세계화")),
        Course("생활과 윤리", False),
        Course("사회·문화", False),
        Course("한국지리", False),
        Course("세계지리", False),
        Course("경제", False),
    ),
    "과학": (
        Course("통합과학", True, ("물질의 규칙성", "자연의 구성 물질", "역학적 시스템", "생명 시스템",
                                 "화학 변화", "생물 다양성", "에너지")),
        Course("물리학Ⅰ", False, ("힘과 운동", "운동량", "열역학", "전자기", "파동", "빛과 물질")),
        Course("화학Ⅰ", False, ("몰", "원자 구조", "주기적 성질", "화학 결합", "산화 환원", "중화 반응")),
        Course("생명과학Ⅰ", False, ("세포와 물질대사", "신경계", "항상성", "면역", "유전", "생태계")),
        Course("지구과학Ⅰ", False, ("판 구조론", "지질 시대", "대기와 해양", "별의 진화", "외계 행성",
                                  "우주")),
    ),
    "한국사": (
        Course("한국사", True, ("전근대 한국사", "근대 국민 국가 수립", "일제 식민지 지배",
                               "대한민국 정부 수립", "민주주의의 발전", "경제 성장", "통일 정책")),
    ),
    "정보": (
        Course("정보", True, ("자료와 정보", "알고리즘", "프로그래밍", "컴퓨팅 시스템", "인공지능 기초")),
    ),
    "제2외국어": (Course("일본어Ⅰ", True), Course("중국어Ⅰ", True)),
    "진로": (Course("진로와 직업", True, ("자기 이해", "직업 세계", "진학 설계", "면접 준비")),),
}  # fmt: skip
_GED_SUBJECTS: tuple[str, ...] = ("국어", "수학", "영어", "사회", "과학", "한국사")
_TRACK_SHARES: dict[str, tuple[float, ...]] = {  # over TRACKS
    "middle": (0.7, 0.3, 0.0, 0.0),
    "high_common": (0.6, 0.4, 0.0, 0.0),
    "high": (0.4, 0.2, 0.4, 0.0),
    "ged": (0.0, 0.0, 0.0, 1.0),
}
_LEVEL_SHARES: tuple[tuple[float, float, float], ...] = (  # per track
    (0.4, 0.4, 0.2),
    (0.2, 0.5, 0.3),
    (0.2, 0.4, 0.4),
    (0.6, 0.4, 0.0),
)
_LABELS: dict[str, tuple[str, str, str]] = {
    "개념": ("기초다지기", "개념완성", "심화완성"),
    "내신": ("내신 기본", "내신대비", "내신 만점"),
    "수능": ("수능 기초", "수능 개념", "수능 실전"),
    "검정고시": ("합격 기초", "합격 완성", "합격 완성"),
}
#: Share of series released during the window (not available from its start).
NEW_SERIES_SHARE: Final = 0.15
#: Share of series withdrawn during the window (inactive today).
RETIRED_SERIES_SHARE: Final = 0.03
#: Share of single episodes taken down (inactive today, no other effect).
RETIRED_EPISODE_SHARE: Final = 0.005


@dataclass(frozen=True)
class SynthCatalogue:
    """The generated catalogue: the lectures table, the model traits and the per-series arrays.

    Series arrays are indexed by series number; lecture rows of a series are contiguous, in episode order.
    """

    table: pa.Table  # schema LECTURES
    traits: LectureTraits
    ids: IdFormat
    first: npt.NDArray[np.int64]  # (S,) lecture row of episode 1
    length: npt.NDArray[np.int64]  # (S,) episodes
    available_from: npt.NDArray[np.int64]  # (S,) first day it can be started
    available_until: npt.NDArray[np.int64]  # (S,) day it was withdrawn (exclusive)
    subject: npt.NDArray[np.int64]  # (S,) index into SUBJECTS
    curriculum: npt.NDArray[np.float64]  # (S,) order in which a student takes series of a subject
    eligible: npt.NDArray[np.bool_]  # (n_regions, len(GRADES), S): licensed in region and suits grade

    @property
    def n_series(self) -> int:
        """Number of series."""
        return int(self.first.shape[0])


def _weighted(rng: np.random.Generator, weights: npt.ArrayLike) -> int:
    w = np.asarray(weights, dtype=np.float64)
    return int(rng.choice(w.shape[0], p=w / w.sum()))


def _series_length(rng: np.random.Generator, n_lectures: int) -> int:
    """Episodes of one series: 5-30, typically ~11; shorter caps keep small catalogues varied."""
    cap = max(2, min(30, n_lectures // 25))
    floor = min(5, cap)
    return int(np.clip(round(rng.lognormal(np.log(11.0), 0.55)), floor, cap))


def _grades_of(rng: np.random.Generator, segment: str, track: str, grade: str, common: bool) -> list[str]:
    """Grades a series suits: its own grade, sometimes the next (review), `oos` for m3..h3 content."""
    if segment == "ged":
        return ["oos"]
    if segment == "middle":
        grades = [grade]
        if grade != "m3" and rng.random() < 0.25:
            grades.append(GRADES[GRADES.index(grade) + 1])
    elif track == "수능":
        grades = ["h3"] if rng.random() < 0.6 else ["h3", "h2"]
    elif common:
        grades = ["h1", "h2"] if rng.random() < 0.25 else ["h1"]
    else:
        grades = ["h2", "h3"]
    if any(g in grades for g in ("m3", "h1", "h2", "h3")):
        grades.append("oos")
    return grades


def build_catalogue(
    n_lectures: int, regions: tuple[str, ...], n_days: int, rng: np.random.Generator
) -> SynthCatalogue:
    """Draw a catalogue of exactly `n_lectures` lectures.

    Args:
        n_lectures: lectures to create (>= 1).
        regions: the region vocabulary of the students (rows of `eligible`).
        n_days: days of the simulated window (for release and withdrawal days).
        rng: the random generator (the catalogue's own stream).

    Returns:
        The catalogue.
    """
    width = max(5, len(str(n_lectures)))
    ids = IdFormat("lec", width)
    provider_weights = np.asarray([p.weight for p in PROVIDERS])
    subject_shares = np.asarray(SUBJECT_SHARES)
    rows: dict[str, list[object]] = {name: [] for name in LECTURES.names}
    traits: dict[str, list[object]] = {
        k: [] for k in ("subject", "level", "provider", "series", "position", "track", "primary", "duration")
    }
    first: list[int] = []
    length: list[int] = []
    subject_of: list[int] = []
    curriculum: list[float] = []
    licences: list[tuple[str, ...]] = []
    grades_of: list[list[str]] = []
    made = 0
    s = 0
    while made < n_lectures:
        segment = SEGMENTS[_weighted(rng, SEGMENT_SHARES)]
        serving = [k for k, p in enumerate(PROVIDERS) if segment in p.segments]
        pk = serving[_weighted(rng, provider_weights[serving])]
        provider = PROVIDERS[pk]
        allowed = (
            _GED_SUBJECTS if segment == "ged" else tuple(SUBJECTS)
        )  # every subject in middle and high school
        subject = allowed[_weighted(rng, [subject_shares[SUBJECTS.index(a)] for a in allowed])]
        if segment == "middle":
            g = int(rng.integers(3))
            grade = ("m1", "m2", "m3")[g]
            course = Course(_MIDDLE_COURSE.get(subject, subject), False, _MIDDLE_UNITS[subject])
            rank = float(g)
            track = TRACKS[_weighted(rng, _TRACK_SHARES["middle"])]
        elif segment == "high":
            courses = _HIGH_COURSES[subject]
            ck = int(rng.integers(len(courses)))
            course = courses[ck]
            grade = "h1" if course.common else "h2"
            rank = float(ck)
            track = TRACKS[_weighted(rng, _TRACK_SHARES["high_common" if course.common else "high"])]
            if track == "수능":
                grade = "h3"
        else:
            course = next(c for c in _HIGH_COURSES[subject] if c.common)
            grade, rank, track = "oos", 0.0, "검정고시"
        level = 1 + _weighted(rng, _LEVEL_SHARES[TRACKS.index(track)])
        size = min(_series_length(rng, n_lectures), n_lectures - made)
        grades = _grades_of(rng, segment, track, grade, course.common)
        primary = GRADES.index(grades[0])
        label = _LABELS[track][level - 1]
        if track == "수능" and provider.name == "EBS":
            label = "수능특강" if level < 3 else "수능완성"
        if segment == "ged":
            head = f"[{provider.name}] 고졸 검정고시 {course.name} {label}"
        elif track == "수능":
            head = f"[{provider.name}] {GRADE_LABELS_KO[grades[0]]} {label} {course.name}"
        else:
            head = f"[{provider.name}] {GRADE_LABELS_KO[grades[0]]} {course.name} {label}"
        units = course.units
        if size <= len(units):
            offset = int(rng.integers(len(units) - size + 1))
            unit_of = [units[offset + k] for k in range(size)]
        else:
            unit_of = [units[k * len(units) // size] for k in range(size)]
        base_minutes = provider.minutes * float(rng.lognormal(0.0, 0.2))
        minutes = np.clip(base_minutes * rng.uniform(0.85, 1.15, size), 10.0, 90.0)
        series_id = f"ser{s + 1:04d}"
        for k in range(size):
            row = made + k
            rows["lecture_id"].append(ids.format(row))
            rows["title"].append(f"{head} {k + 1}강: {unit_of[k]}")
            rows["provider"].append(provider.name)
            rows["subject"].append(subject)
            rows["grades"].append(list(grades))
            rows["level"].append(level)
            rows["series_id"].append(series_id)
            rows["series_position"].append(k + 1)
            rows["duration_min"].append(float(np.round(minutes[k] * 2) / 2))
            rows["regions"].append(list(provider.regions))
            rows["active"].append(True)
            traits["subject"].append(SUBJECTS.index(subject))
            traits["level"].append(level)
            traits["provider"].append(pk)
            traits["series"].append(s)
            traits["position"].append(k + 1)
            traits["track"].append(TRACKS.index(track))
            traits["primary"].append(primary)
        first.append(made)
        length.append(size)
        subject_of.append(SUBJECTS.index(subject))
        # basic before advanced within a course, earlier courses (grades) first
        curriculum.append(rank * 3.0 + level - 1)
        licences.append(provider.regions)
        grades_of.append(grades)
        made += size
        s += 1
    n_series = s
    available_from = np.zeros(n_series, dtype=np.int64)
    available_until = np.full(n_series, n_days, dtype=np.int64)
    new = rng.random(n_series) < NEW_SERIES_SHARE
    available_from[new] = rng.integers(1, max(2, int(n_days * 0.9)), int(new.sum()))
    retired = rng.random(n_series) < RETIRED_SERIES_SHARE
    if n_lectures >= 50 and not retired.any():
        retired[int(rng.integers(n_series))] = True  # every realistic catalogue has some
    for k in np.flatnonzero(retired).tolist():
        lo = int(available_from[k]) + max(1, n_days // 10)
        available_until[k] = min(n_days, int(rng.integers(min(lo, n_days - 1), n_days)) + 1)
    first_a = np.asarray(first, dtype=np.int64)
    length_a = np.asarray(length, dtype=np.int64)
    active = np.ones(n_lectures, dtype=bool)
    for k in np.flatnonzero(retired).tolist():
        active[first_a[k] : first_a[k] + length_a[k]] = False
    active &= rng.random(n_lectures) >= RETIRED_EPISODE_SHARE
    rows["active"] = active.tolist()
    quality = np.asarray([p.popularity for p in PROVIDERS])[np.asarray(traits["provider"])]
    series_quality = rng.normal(0.0, 0.5, n_series).astype(np.float32)
    series_latent = rng.normal(0.0, 1.0, (n_series, LATENT_DIM)).astype(np.float32)
    series_of = np.asarray(traits["series"], dtype=np.int32)
    lecture_traits = LectureTraits(
        subject=np.asarray(traits["subject"], dtype=np.int16),
        level=np.asarray(traits["level"], dtype=np.int8),
        provider=np.asarray(traits["provider"], dtype=np.int16),
        series=series_of,
        position=np.asarray(traits["position"], dtype=np.int32),
        track=np.asarray(traits["track"], dtype=np.int8),
        primary_grade=np.asarray(traits["primary"], dtype=np.int8),
        duration=np.asarray(rows["duration_min"], dtype=np.float32),
        quality=(quality + series_quality[series_of]).astype(np.float32),
        latent=series_latent[series_of],
    )
    eligible = np.zeros((len(regions), len(GRADES), n_series), dtype=bool)
    for k in range(n_series):
        gs = [GRADES.index(g) for g in grades_of[k]]
        rs = (
            range(len(regions))
            if ALL_REGIONS in licences[k]
            else [i for i, r in enumerate(regions) if r in licences[k]]
        )
        for r in rs:
            eligible[r, gs, k] = True
    table = pa.Table.from_pydict(rows, schema=LECTURES)
    return SynthCatalogue(
        table=table,
        traits=lecture_traits,
        ids=ids,
        first=first_a,
        length=length_a,
        available_from=available_from,
        available_until=available_until,
        subject=np.asarray(subject_of, dtype=np.int64),
        curriculum=np.asarray(curriculum, dtype=np.float64),
        eligible=eligible,
    )
