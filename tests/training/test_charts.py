"""Charts draw Korean with the font shipped by a PyPI package, on a machine with no CJK font."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest
from matplotlib import font_manager
from matplotlib.figure import Figure

from training import charts

REPO = Path(__file__).resolve().parents[2]
KOREAN = ("국어", "수학", "영어", "한국사", "서울", "평창", "태백", "김포", "인천", "충북")


def _draw_korean(fig: Figure) -> bytes:
    ax = fig.subplots()
    ax.bar(range(len(KOREAN)), range(len(KOREAN)), label="수강 신청 (enrolments)")
    ax.set_xticks(range(len(KOREAN)))
    ax.set_xticklabels(KOREAN)
    ax.set_title("과목별 · 지역별 추천 성과 −0.5")
    ax.set_ylabel("학생 수")
    ax.legend()
    return charts.png_base64(fig, dpi=60).encode()


def test_a_chart_renders_korean_with_no_glyph_missing() -> None:
    """Regression: Hangul drawn as empty boxes without a CJK font. matplotlib warns for every missing
    glyph and the suite turns warnings into errors, so drawing is the check."""
    assert _draw_korean(charts.figure(figsize=(6, 3)))
    # NanumGothic is the font of the package, found by name (no silent fallback to another font)
    found = font_manager.fontManager.findfont(charts.KOREAN_FONT, fallback_to_default=False)
    assert Path(found) == charts.korean_font_path()
    assert "koreanize_matplotlib" in Path(found).parts


def test_the_check_sees_a_missing_glyph() -> None:
    """matplotlib's own fonts have no Hangul: the same chart without the helper's font warns."""
    with (
        matplotlib.rc_context({"font.family": ["sans-serif"]}),
        pytest.warns(UserWarning, match="missing from font"),
    ):
        _draw_korean(Figure(figsize=(6, 3)))


def test_every_chart_goes_through_the_helper() -> None:
    """A figure made directly (Figure(...), pyplot) would not get the Korean font."""
    direct = re.compile(r"\bFigure\(|\bpyplot\b|\bplt\.")
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for package in ("features", "models", "training", "service")
        for path in sorted((REPO / package).rglob("*.py"))
        if path.name != "charts.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if direct.search(line)
    ]
    assert offenders == []
