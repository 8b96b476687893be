"""Map the Open University Learning Analytics Dataset (OULAD) onto the students / lectures / events tables.

Source: Kuzilek J., Hlosta M., Zdrahal Z. (2017). Open University Learning Analytics dataset.
Scientific Data 4:170171, doi:10.1038/sdata.2017.171. Licence CC BY 4.0: credit the authors wherever the
data, or results computed from it, are shown. The files are read where they are (by default
`../shared/datasets/oulad`); nothing of the dataset is copied into the repository.

Mapping (every count of an odd case is in the returned `OuladReport`, which also goes into the manifest):

* **lectures** = the 22 module presentations of `courses.csv`: `lecture_id` = `AAA-2013J`, title
  `"AAA 2013J (Social Sciences)"`, provider "The Open University", subject = the module's domain
  (AAA, BBB, GGG Social Sciences; CCC, DDD, EEE, FFF STEM, as in the paper), series = the module,
  `series_position` = order of its presentations (2013B < 2013J < 2014B < 2014J), `duration_min` =
  `module_presentation_length` days x 60 (a nominal study hour per presentation day: OULAD records
  only the calendar length), level 2 (OULAD has no levels; the neutral middle one), grades `["adult"]`,
  regions `["*"]`, active.
* **students** = one per `id_student` (`student_id` = its digits). A student registered in several
  presentations takes the attributes of the latest presentation (ties in one presentation: the last
  module code). `region` = the UK region as a slug ("East Anglian Region" -> `east_anglian`, "Scotland"
  -> `scotland`), `support_category` = `imd_band`, the deprivation band of the student's area (the
  group the equity reports compare; blank -> null; "10-20" written without "%" in the source ->
  "10-20%"), `age_band` as given, grade `adult`, other profile columns null.
* **dates**: a presentation starts on 1 February (B) or 1 October (J) of the year in its code; an OULAD
  day number d (negative = before the start) is start + d days. Within a day, events are placed at
  fixed hours so that the funnel keeps its order: enrol 00:00, progress 12:00, drop 18:00,
  complete 23:00 UTC.
* **enrol**: one per registration (studentRegistration.csv) on `date_registration`. When it is blank,
  on the earliest of the presentation start, the student's first submission and the unregistration.
* **progress**: one per assessment submission (studentAssessment.csv) on `date_submitted`, with
  progress = the share of the presentation's assessments the student has submitted so far (by count:
  the assessment weights cannot be used because in GGG all coursework weighs 0, and the exam weighs
  100 in every module). Banked submissions (carried over from an earlier attempt, dated -1) and
  submissions dated before the registration are placed on the enrol day. Scores are not part of the
  event; `?` scores (submitted, no score recorded) therefore still count as submissions.
* **drop**: on `date_unregistration` when there is one (final_result Withdrawn, or in a few rows Fail);
  moved to the last submission day when the student submitted after unregistering, so that the drop
  stays the pair's last event. Withdrawn without an unregistration date: a drop on the student's last
  activity (the enrol or the last submission), the earliest day consistent with the record.
* **complete**: final_result Pass or Distinction, at the presentation end (start + length days), or at
  the last submission when that is later. Fail and Withdrawn never complete.

Size: over 600 lines because one documented transformation of one dataset; most of its length is the
mapping's documentation and the odd cases it counts.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from features.errors import DatasetNotFoundError, SchemaError
from features.tables import Dataset, Progress, sort_events
from features.validation import validate_events, validate_lectures, validate_students

CITATION = (
    "Kuzilek J., Hlosta M., Zdrahal Z. (2017). Open University Learning Analytics dataset. "
    "Scientific Data 4:170171. doi:10.1038/sdata.2017.171"
)
DOI = "10.1038/sdata.2017.171"
LICENSE = "CC BY 4.0"
PROVIDER = "The Open University"
#: Module domains as published in the paper.
MODULE_DOMAINS: dict[str, str] = {
    "AAA": "Social Sciences",
    "BBB": "Social Sciences",
    "GGG": "Social Sciences",
    "CCC": "STEM",
    "DDD": "STEM",
    "EEE": "STEM",
    "FFF": "STEM",
}
#: Month in which a presentation starts, by the letter of its code.
START_MONTH: dict[str, int] = {"B": 2, "J": 10}
MINUTES_PER_DAY = 60.0
LEVEL = 2
#: Hour of the day at which each event type is placed (keeps the funnel order within one day).
EVENT_HOUR: dict[str, int] = {"enrol": 0, "progress": 12, "drop": 18, "complete": 23}

_FILES: dict[str, tuple[str, ...]] = {
    "courses.csv": ("code_module", "code_presentation", "module_presentation_length"),
    "studentInfo.csv": (
        "code_module",
        "code_presentation",
        "id_student",
        "region",
        "imd_band",
        "age_band",
        "final_result",
    ),
    "studentRegistration.csv": (
        "code_module",
        "code_presentation",
        "id_student",
        "date_registration",
        "date_unregistration",
    ),
    "assessments.csv": (
        "code_module",
        "code_presentation",
        "id_assessment",
        "assessment_type",
        "date",
        "weight",
    ),
    "studentAssessment.csv": ("id_student", "id_assessment", "date_submitted", "is_banked", "score"),
}
_KEY = ["code_module", "code_presentation", "id_student"]
_PRESENTATION = re.compile(r"^(\d{4})([BJ])$")
_US_PER_HOUR = 3_600_000_000


@dataclass
class OuladReport:
    """How the OULAD files were mapped: row counts and how many rows of each odd kind were seen."""

    source_dir: str
    presentations: int = 0
    modules: int = 0
    registrations: int = 0
    student_info_rows: int = 0
    students: int = 0
    students_in_several_presentations: int = 0
    assessments: int = 0
    assessments_without_date: int = 0
    submissions: int = 0
    events: dict[str, int] = field(default_factory=dict)
    final_results: dict[str, int] = field(default_factory=dict)
    blank_imd_band_rows: int = 0
    imd_band_without_percent_rows: int = 0
    students_without_support_category: int = 0
    blank_date_registration: int = 0
    registered_before_start: int = 0
    unregistrations: int = 0
    unregistered_before_start: int = 0
    fail_with_unregistration: int = 0
    withdrawn_without_unregistration: int = 0
    passed_with_unregistration: int = 0
    drops_moved_after_late_submissions: int = 0
    question_mark_scores: int = 0
    blank_scores: int = 0
    banked_submissions: int = 0
    submissions_before_registration: int = 0
    submissions_before_start: int = 0
    completions_moved_after_late_submissions: int = 0
    unknown_module_domains: int = 0
    registrations_without_student_info: int = 0
    submissions_without_registration: int = 0
    mapping: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-serialisable data (goes into the dataset manifest)."""
        return asdict(self)

    def lines(self) -> list[str]:
        """The report as short human-readable lines (for the CLI)."""
        out = [
            f"OULAD from {self.source_dir} ({CITATION}; licence {LICENSE})",
            f"{self.presentations} presentations of {self.modules} modules -> lectures",
            f"{self.student_info_rows:,} studentInfo rows -> {self.students:,} students "
            f"({self.students_in_several_presentations:,} in several presentations: latest attributes kept)",
            f"{self.registrations:,} registrations, {self.submissions:,} submissions -> "
            + ", ".join(f"{n:,} {t}" for t, n in self.events.items()),
        ]
        odd = {
            "blank imd_band rows (-> null)": self.blank_imd_band_rows,
            "imd_band without '%' rows (normalised)": self.imd_band_without_percent_rows,
            "blank date_registration (enrol at start/first activity)": self.blank_date_registration,
            "registered before the start (negative day)": self.registered_before_start,
            "unregistrations (-> drop)": self.unregistrations,
            "Fail with an unregistration (-> drop)": self.fail_with_unregistration,
            "Withdrawn without unregistration (drop at last activity)": self.withdrawn_without_unregistration,
            "Pass/Distinction with an unregistration (no drop)": self.passed_with_unregistration,
            "drops moved after later submissions": self.drops_moved_after_late_submissions,
            "'?' scores (still a submission)": self.question_mark_scores,
            "banked submissions (on the enrol day)": self.banked_submissions,
            "submissions before registration (on the enrol day)": self.submissions_before_registration,
            "submissions before the start (kept, negative day)": self.submissions_before_start,
            "completions moved after late submissions": self.completions_moved_after_late_submissions,
            "assessments without a date (unused)": self.assessments_without_date,
            "registrations without studentInfo (skipped)": self.registrations_without_student_info,
            "submissions without a registration (skipped)": self.submissions_without_registration,
        }
        out += [f"  {label}: {count:,}" for label, count in odd.items()]
        return out


# ----------------------------------------------------------------------------------------------------------
# reading and parsing


def _read(source: Path, name: str) -> pd.DataFrame:
    path = source / name
    if not path.is_file():
        raise DatasetNotFoundError(
            f"OULAD file {path} is missing: download OULAD (doi:{DOI}) and point --source at its directory"
        )
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise SchemaError(str(path), "*", [], f"cannot read the CSV file: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    for column in _FILES[name]:
        if column not in frame.columns:
            raise SchemaError(str(path), column, [], f"required column '{column}' is missing")
    for column in frame.columns:
        frame[column] = frame[column].str.strip()
    return frame


def _integers(frame: pd.DataFrame, column: str, file: str, blank_ok: bool = False) -> npt.NDArray[np.float64]:
    """A column of whole numbers as float64 (NaN = blank, allowed only when `blank_ok`)."""
    text = frame[column]
    blank = (text == "").to_numpy()
    ok = text.str.fullmatch(r"[+-]?\d+").to_numpy(dtype=bool)
    bad = ~ok & ~blank if blank_ok else ~ok
    if bad.any():
        raise SchemaError(
            file,
            column,
            (np.flatnonzero(bad) + 1).tolist(),
            f"expected a whole number, got {text[bad].iloc[0]!r}",
        )
    return pd.to_numeric(text.where(~blank, None)).to_numpy(dtype=np.float64, na_value=np.nan)


def region_slug(name: str) -> str:
    """A UK region name as a region code: "East Anglian Region" -> "east_anglian", "Scotland" -> "scotland".

    Args:
        name: the OULAD region name.

    Returns:
        A lower-case ASCII slug matching `features.schemas.REGION_PATTERN`.
    """
    base = re.sub(r"\s+region$", "", name.strip(), flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9]+", "_", base.lower()).strip("_")
    return slug if slug and slug[0].isalpha() else f"r_{slug or 'unknown'}"


def _presentation_parts(
    codes: pd.Series[Any], file: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(year, order key) of presentation codes such as 2013J; order key sorts 2013B < 2013J < 2014B."""
    parts = codes.str.extract(_PRESENTATION)
    bad = parts[0].isna().to_numpy()
    if bad.any():
        raise SchemaError(
            file,
            "code_presentation",
            (np.flatnonzero(bad) + 1).tolist(),
            f"presentation code {codes[bad].iloc[0]!r} is not YYYYB or YYYYJ",
        )
    year = np.asarray(parts[0].astype(np.int64), dtype=np.int64)
    autumn = np.asarray(parts[1] == "J", dtype=np.int64)
    return year, year * 2 + autumn


def _start_us(codes: pd.Series[Any], file: str) -> npt.NDArray[np.int64]:
    """Start of each presentation (1 Feb for B, 1 Oct for J) in microseconds since the epoch, UTC."""
    year, _ = _presentation_parts(codes, file)
    month = codes.str[-1].map(START_MONTH).to_numpy(dtype=np.int64)
    months = (year - 1970) * 12 + (month - 1)
    return np.asarray(months, dtype="datetime64[M]").astype("datetime64[us]").view(np.int64)


def _timestamps(start_us: npt.NDArray[np.int64], day: npt.NDArray[Any], kind: str) -> pd.Series[Any]:
    us = start_us + (day.astype(np.int64) * 24 + EVENT_HOUR[kind]) * _US_PER_HOUR
    return pd.Series(us.astype("datetime64[us]")).dt.tz_localize("UTC")


# ----------------------------------------------------------------------------------------------------------
# the mapping


def load_oulad(source_dir: Path, *, progress: Progress | None = None) -> tuple[Dataset, OuladReport]:
    """Read the OULAD CSV files and map them onto the students / lectures / events tables.

    Args:
        source_dir: the directory holding courses.csv, studentInfo.csv, studentRegistration.csv,
            assessments.csv and studentAssessment.csv.
        progress: optional `progress(stage, done, total)` callback.

    Returns:
        The validated dataset (manifest with source, citation, licence and the report) and the report.

    Raises:
        DatasetNotFoundError: the directory or one of the files is missing.
        SchemaError: a file breaks the OULAD layout (names file, row and column).
    """
    source = Path(source_dir)
    if not source.is_dir():
        raise DatasetNotFoundError(
            f"OULAD directory {source} does not exist: download OULAD (doi:{DOI}) and pass --source"
        )
    steps = len(_FILES) + 4
    done = 0

    def tick(stage: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(stage, done, steps)

    raw: dict[str, pd.DataFrame] = {}
    for name in _FILES:
        raw[name] = _read(source, name)
        tick("reading")
    report = OuladReport(source_dir=str(source.resolve()), mapping=_mapping_rules())

    lectures, courses = _lectures(raw["courses.csv"], str(source / "courses.csv"), report)
    students = _students(raw["studentInfo.csv"], str(source / "studentInfo.csv"), report)
    tick("mapping")
    events = _events(raw, source, courses, report)
    tick("mapping")

    students = validate_students(students, "students (mapped from studentInfo.csv)")
    lectures = validate_lectures(lectures, "lectures (mapped from courses.csv)")
    tick("validating")
    events = validate_events(
        events,
        "events (mapped from studentRegistration.csv, studentAssessment.csv, studentInfo.csv)",
        student_ids=pd.Index(students["student_id"]),
        lecture_ids=pd.Index(lectures["lecture_id"]),
    )
    report.events = {str(t): int(n) for t, n in events["type"].value_counts().sort_index().items()}
    manifest: dict[str, Any] = {
        "name": "oulad",
        "source": "Open University Learning Analytics Dataset (OULAD)",
        "citation": CITATION,
        "doi": DOI,
        "license": LICENSE,
        "attribution": "Contains data from OULAD by Kuzilek, Hlosta & Zdrahal (2017), CC BY 4.0.",
        "source_dir": report.source_dir,
        "mapping": report.as_dict(),
    }
    ds = Dataset(students, lectures, sort_events(events), manifest)
    tick("validating")
    return ds, report


def _mapping_rules() -> dict[str, str]:
    return {
        "lectures": "one per module presentation (courses.csv), id CODE-PRESENTATION",
        "subject": "module domain: AAA, BBB, GGG Social Sciences; CCC, DDD, EEE, FFF STEM",
        "duration_min": f"module_presentation_length days x {MINUTES_PER_DAY:g}",
        "students": "one per id_student; attributes of the latest presentation",
        "region": "UK region name -> slug without 'Region'",
        "support_category": "imd_band; blank -> null; '10-20' -> '10-20%'",
        "dates": "presentation start 1 Feb (B) / 1 Oct (J) of the code's year + day number; hours "
        + ", ".join(f"{t} {h:02d}:00" for t, h in EVENT_HOUR.items()),
        "enrol": "registration day; blank -> earliest of start, first submission, unregistration",
        "progress": "each submission; share of the presentation's assessments submitted so far (by count)",
        "drop": "unregistration (moved after later submissions); Withdrawn without date -> last activity",
        "complete": "Pass/Distinction at presentation end (or last submission if later)",
        "score '?'": "submission counted, score unused",
    }


def _lectures(courses: pd.DataFrame, file: str, report: OuladReport) -> tuple[pd.DataFrame, pd.DataFrame]:
    length = _integers(courses, "module_presentation_length", file)
    _, order = _presentation_parts(courses["code_presentation"], file)
    c = courses.assign(length=length, order=order, start_us=_start_us(courses["code_presentation"], file))
    c["lecture_id"] = c["code_module"] + "-" + c["code_presentation"]
    dupes = c["lecture_id"].duplicated(keep=False).to_numpy()
    if dupes.any():
        raise SchemaError(
            file,
            "code_presentation",
            (np.flatnonzero(dupes) + 1).tolist(),
            "module presentation listed twice",
        )
    domain = c["code_module"].map(MODULE_DOMAINS)
    report.unknown_module_domains = int(domain.isna().sum())
    c["domain"] = domain.fillna("unknown")
    c["series_position"] = c.groupby("code_module")["order"].rank(method="first").astype(np.int64)
    report.presentations = len(c)
    report.modules = int(c["code_module"].nunique())
    lectures = pd.DataFrame(
        {
            "lecture_id": c["lecture_id"],
            "title": c["code_module"] + " " + c["code_presentation"] + " (" + c["domain"] + ")",
            "provider": PROVIDER,
            "subject": c["domain"],
            "grades": [["adult"] for _ in range(len(c))],
            "level": LEVEL,
            "series_id": c["code_module"],
            "series_position": c["series_position"],
            "duration_min": c["length"] * MINUTES_PER_DAY,
            "regions": [["*"] for _ in range(len(c))],
            "active": True,
        }
    )
    return lectures, c[["code_module", "code_presentation", "lecture_id", "length", "order", "start_us"]]


def _students(info: pd.DataFrame, file: str, report: OuladReport) -> pd.DataFrame:
    _integers(info, "id_student", file)
    _, order = _presentation_parts(info["code_presentation"], file)
    report.student_info_rows = len(info)
    report.final_results = {
        str(k): int(v) for k, v in info["final_result"].value_counts().sort_index().items()
    }
    imd = info["imd_band"]
    blank = imd == ""
    no_percent = imd.str.fullmatch(r"\d+-\d+")
    report.blank_imd_band_rows = int(blank.sum())
    report.imd_band_without_percent_rows = int(no_percent.sum())
    imd = imd.where(~no_percent, imd + "%").where(~blank, None)
    bad_region = (info["region"] == "").to_numpy()
    if bad_region.any():
        raise SchemaError(file, "region", (np.flatnonzero(bad_region) + 1).tolist(), "blank region")
    s = info.assign(order=order, support_category=imd)
    # latest presentation wins; within one presentation the last module code (deterministic)
    s = s.sort_values(["id_student", "order", "code_module"], kind="stable")
    counts = s["id_student"].value_counts()
    report.students_in_several_presentations = int((counts > 1).sum())
    latest = s.drop_duplicates("id_student", keep="last")
    report.students = len(latest)
    slugs = {name: region_slug(name) for name in latest["region"].unique()}
    students = pd.DataFrame(
        {
            "student_id": latest["id_student"].to_numpy(),
            "region": latest["region"].map(slugs).to_numpy(),
            "grade": "adult",
            "support_category": latest["support_category"].to_numpy(),
            "age_band": latest["age_band"].replace("", None).to_numpy(),
        }
    )
    report.students_without_support_category = int(students["support_category"].isna().sum())
    return students.sort_values("student_id", key=lambda k: k.astype(np.int64)).reset_index(drop=True)


def _events(
    raw: dict[str, pd.DataFrame], source: Path, courses: pd.DataFrame, report: OuladReport
) -> pd.DataFrame:
    reg_file = str(source / "studentRegistration.csv")
    reg = raw["studentRegistration.csv"]
    reg = reg.assign(
        registered=_integers(reg, "date_registration", reg_file, blank_ok=True),
        unregistered=_integers(reg, "date_unregistration", reg_file, blank_ok=True),
    )
    report.registrations = len(reg)
    info = raw["studentInfo.csv"][[*_KEY, "final_result"]]
    reg = reg.merge(info, on=_KEY, how="left", validate="one_to_one")
    no_info = reg["final_result"].isna()
    report.registrations_without_student_info = int(no_info.sum())
    reg = reg[~no_info]
    reg = reg.merge(courses, on=["code_module", "code_presentation"], how="left")
    unknown = reg["lecture_id"].isna().to_numpy()
    if unknown.any():
        raise SchemaError(
            reg_file,
            "code_presentation",
            [],
            f"presentation {reg['code_module'][unknown].iloc[0]}-{reg['code_presentation'][unknown].iloc[0]} "
            "is not in courses.csv",
        )
    reg = reg.reset_index(drop=True)

    subs = _submissions(raw, source, report)
    subs = subs.merge(reg[[*_KEY, "registered", "unregistered"]], on=_KEY, how="left", indicator=True)
    orphan = (subs["_merge"] != "both").to_numpy()
    report.submissions_without_registration = int(orphan.sum())
    subs = subs[~orphan].drop(columns="_merge").reset_index(drop=True)

    # activity bounds per registration, from the submissions
    first_sub = subs.groupby(_KEY)["submitted"].min().rename("first_sub")
    reg = reg.merge(first_sub, left_on=_KEY, right_index=True, how="left")

    blank_reg = reg["registered"].isna()
    report.blank_date_registration = int(blank_reg.sum())
    report.registered_before_start = int((reg["registered"] < 0).sum())
    fallback = np.fmin(np.fmin(0.0, reg["first_sub"].to_numpy()), reg["unregistered"].to_numpy())
    reg["enrol_day"] = np.where(blank_reg, fallback, reg["registered"].to_numpy())

    # progress: placed no earlier than the enrol day, cumulative share of the presentation's assessments
    subs = subs.merge(reg[[*_KEY, "enrol_day", "start_us"]], on=_KEY, how="left")
    report.banked_submissions = int(subs["is_banked"].sum())
    early = (subs["submitted"] < subs["enrol_day"]).to_numpy()
    report.submissions_before_registration = int((early & ~subs["is_banked"].to_numpy()).sum())
    report.submissions_before_start = int(((subs["submitted"] < 0) & ~subs["is_banked"]).sum())
    day = np.where(subs["is_banked"] | early, subs["enrol_day"], subs["submitted"])
    subs = subs.assign(day=day).sort_values([*_KEY, "day", "id_assessment_num"], kind="stable")
    subs = subs.reset_index(drop=True)  # the frames below mix Series and positional arrays
    subs["done"] = subs.groupby(_KEY).cumcount() + 1
    subs["progress"] = (subs["done"] / subs["n_assessments"]).clip(upper=1.0)
    last_sub = subs.groupby(_KEY)["day"].max().rename("last_sub")
    reg = reg.merge(last_sub, left_on=_KEY, right_index=True, how="left")

    lecture = reg["lecture_id"]
    student = reg["id_student"]
    enrol = pd.DataFrame(
        {
            "event_id": "oulad-enrol-" + lecture + "-" + student,
            "student_id": student,
            "lecture_id": lecture,
            "type": "enrol",
            "progress": 0.0,
            "occurred_at": _timestamps(reg["start_us"].to_numpy(), reg["enrol_day"].to_numpy(), "enrol"),
        }
    )
    progress = pd.DataFrame(
        {
            "event_id": "oulad-progress-" + subs["id_assessment"] + "-" + subs["id_student"],
            "student_id": subs["id_student"],
            "lecture_id": subs["code_module"] + "-" + subs["code_presentation"],
            "type": "progress",
            "progress": subs["progress"].to_numpy(),
            "occurred_at": _timestamps(subs["start_us"].to_numpy(), subs["day"].to_numpy(), "progress"),
        }
    )

    result = reg["final_result"]
    passed = result.isin(["Pass", "Distinction"]).to_numpy()
    has_unreg = reg["unregistered"].notna().to_numpy()
    withdrawn = (result == "Withdrawn").to_numpy()
    report.unregistrations = int(has_unreg.sum())
    report.unregistered_before_start = int((reg["unregistered"] < 0).sum())
    report.fail_with_unregistration = int((has_unreg & (result == "Fail").to_numpy()).sum())
    report.passed_with_unregistration = int((has_unreg & passed).sum())
    report.withdrawn_without_unregistration = int((withdrawn & ~has_unreg).sum())
    last_activity = np.fmax(reg["enrol_day"].to_numpy(), reg["last_sub"].to_numpy())
    unreg = reg["unregistered"].to_numpy()
    drop_day = np.where(has_unreg, np.fmax(unreg, last_activity), last_activity)
    report.drops_moved_after_late_submissions = int((has_unreg & ~passed & (drop_day > unreg)).sum())
    dropped = (has_unreg | withdrawn) & ~passed
    d = reg[dropped].reset_index(drop=True)
    drop = pd.DataFrame(
        {
            "event_id": "oulad-drop-" + d["lecture_id"] + "-" + d["id_student"],
            "student_id": d["id_student"],
            "lecture_id": d["lecture_id"],
            "type": "drop",
            "progress": 0.0,
            "occurred_at": _timestamps(d["start_us"].to_numpy(), drop_day[dropped], "drop"),
        }
    )
    end = reg["length"].to_numpy()
    complete_day = np.fmax(end, reg["last_sub"].to_numpy())
    report.completions_moved_after_late_submissions = int((passed & (complete_day > end)).sum())
    c = reg[passed].reset_index(drop=True)
    complete = pd.DataFrame(
        {
            "event_id": "oulad-complete-" + c["lecture_id"] + "-" + c["id_student"],
            "student_id": c["id_student"],
            "lecture_id": c["lecture_id"],
            "type": "complete",
            "progress": 1.0,
            "occurred_at": _timestamps(c["start_us"].to_numpy(), complete_day[passed], "complete"),
        }
    )
    parts = [p.reset_index(drop=True) for p in (enrol, progress, drop, complete)]
    return pd.concat(parts, ignore_index=True)


def _submissions(raw: dict[str, pd.DataFrame], source: Path, report: OuladReport) -> pd.DataFrame:
    """Submissions joined to their presentation, with the presentation's assessment count."""
    a_file = str(source / "assessments.csv")
    assessments = raw["assessments.csv"]
    _integers(assessments, "id_assessment", a_file)
    report.assessments = len(assessments)
    report.assessments_without_date = int((assessments["date"] == "").sum())
    per_presentation = (
        assessments.groupby(["code_module", "code_presentation"]).size().rename("n_assessments")
    )
    assessments = assessments.merge(
        per_presentation, left_on=["code_module", "code_presentation"], right_index=True
    )

    s_file = str(source / "studentAssessment.csv")
    sa = raw["studentAssessment.csv"]
    report.submissions = len(sa)
    submitted = _integers(sa, "date_submitted", s_file)
    _integers(sa, "id_student", s_file)
    banked_text = sa["is_banked"]
    bad = ~banked_text.isin(["0", "1"]).to_numpy()
    if bad.any():
        raise SchemaError(
            s_file,
            "is_banked",
            (np.flatnonzero(bad) + 1).tolist(),
            f"expected 0 or 1, got {banked_text[bad].iloc[0]!r}",
        )
    score = sa["score"]
    question = (score == "?").to_numpy()
    blank = (score == "").to_numpy()
    numeric = pd.to_numeric(score.where(~(question | blank), None), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )
    bad_score = ~(question | blank) & ~((numeric >= 0) & (numeric <= 100))
    if bad_score.any():
        raise SchemaError(
            s_file,
            "score",
            (np.flatnonzero(bad_score) + 1).tolist(),
            f"expected a score 0..100 or '?', got {score[bad_score].iloc[0]!r}",
        )
    report.question_mark_scores = int(question.sum())
    report.blank_scores = int(blank.sum())
    sa = sa.assign(submitted=submitted, is_banked=(banked_text == "1").to_numpy())
    merged = sa.merge(
        assessments[["id_assessment", "code_module", "code_presentation", "n_assessments"]],
        on="id_assessment",
        how="left",
    )
    unknown = merged["code_module"].isna().to_numpy()
    if unknown.any():
        raise SchemaError(
            s_file,
            "id_assessment",
            (np.flatnonzero(unknown) + 1).tolist(),
            f"assessment {merged['id_assessment'][unknown].iloc[0]!r} is not in assessments.csv",
        )
    merged["id_assessment_num"] = merged["id_assessment"].astype(np.int64)
    return merged
