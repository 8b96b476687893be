"""Every chart learnrec draws starts here: a matplotlib figure whose text can be Korean on any machine.

Charts carry Korean (subjects such as 국어 and 수학, region and lecture names), and a machine without a CJK
font draws it as empty boxes. NanumGothic comes from the koreanize-matplotlib wheel, so nothing depends on
the fonts of the system; it stands behind the default sans-serif font, which keeps drawing Latin text and
digits as before and hands each Hangul glyph on to NanumGothic.
"""

from __future__ import annotations

import base64
import importlib.util
import io
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: The font family that draws Hangul.
KOREAN_FONT = "NanumGothic"
#: The distribution and the file that ship it.
FONT_PACKAGE = "koreanize_matplotlib"
FONT_FILE = "fonts/NanumGothic.ttf"


class ChartFontError(RuntimeError):
    """The Korean font is not installed (learnrec's dependencies are incomplete)."""


def korean_font_path() -> Path:
    """The NanumGothic file installed with koreanize-matplotlib.

    The package is located, not imported: importing it changes matplotlib's settings for the whole process
    and imports `distutils`, which Python 3.12 removed.

    Returns:
        The path of the TrueType file.

    Raises:
        ChartFontError: the package or the file is missing.
    """
    spec = importlib.util.find_spec(FONT_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / FONT_FILE
        if path.is_file():
            return path
    raise ChartFontError(
        f"{FONT_FILE} of the koreanize-matplotlib package is missing: reinstall learnrec (make install)"
    )


@lru_cache(maxsize=1)
def use_korean_font() -> None:
    """Register NanumGothic with matplotlib and put it behind the sans-serif font (once per process)."""
    import matplotlib
    from matplotlib import font_manager

    font_manager.fontManager.addfont(str(korean_font_path()))
    # one font per family name: the generic family resolves to the first sans-serif font installed,
    # and what it lacks (Hangul) falls back to the next family of the list
    families = [f for f in matplotlib.rcParams["font.family"] if f != KOREAN_FONT]
    matplotlib.rcParams["font.family"] = [*families, KOREAN_FONT]


def figure(**kwargs: Any) -> Figure:
    """A new matplotlib figure that draws Korean text.

    Args:
        kwargs: passed to `matplotlib.figure.Figure` (figsize, layout, ...).

    Returns:
        The figure.
    """
    from matplotlib.figure import Figure

    use_korean_font()
    return Figure(**kwargs)


def png_base64(fig: Figure, **savefig: Any) -> str:
    """The figure as a base64 PNG, to embed in an HTML page.

    Args:
        fig: the figure.
        savefig: passed to `Figure.savefig` (dpi, bbox_inches, ...).

    Returns:
        Base64 text of the PNG.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **savefig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
