"""`learnrec data` commands: build datasets (OULAD, plain event files, synthetic) and validate them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from training.commands.console import progress_bars

if TYPE_CHECKING:
    from features.tables import Dataset

app = typer.Typer(no_args_is_help=True)

#: Where `learnrec data oulad` looks for the OULAD files when --source is not given (first that exists).
OULAD_RELATIVE = Path("..") / "shared" / "datasets" / "oulad"
_REPO_ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------------------
# shared helpers


@contextmanager
def _data_errors() -> Iterator[None]:
    """Turn the data layer's domain errors into a one-line message on stderr and exit code 2."""
    from features.errors import DatasetNotFoundError, SchemaError

    try:
        yield
    except (SchemaError, DatasetNotFoundError) as exc:
        message = " ".join(str(exc).split())
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2) from None


def _summary(verb: str, directory: Path, sizes: dict[str, int], seconds: float, extra: str = "") -> None:
    counts = ", ".join(f"{n:,} {name}" for name, n in sizes.items())
    tail = f"; {extra}" if extra else ""
    typer.echo(f"{verb} {directory}: {counts} in {seconds:.1f} s{tail}")


def _write(ds: Dataset, out: Path, progress: Callable[[str, int, int], None]) -> str:
    """Write an already validated dataset; returns its fingerprint."""
    import json

    from features.tables import MANIFEST_FILE, write_dataset

    write_dataset(ds, out, validate=False, progress=progress)
    manifest: dict[str, Any] = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    return str(manifest.get("fingerprint", ""))


def default_oulad_source() -> Path:
    """The OULAD directory: ../shared/datasets/oulad from the working directory, else from the repo."""
    candidates = [Path.cwd() / OULAD_RELATIVE, _REPO_ROOT / OULAD_RELATIVE]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return candidates[0]


# ----------------------------------------------------------------------------------------------------------
# commands


@app.command()
def oulad(
    source: Annotated[
        Path | None,
        typer.Option(help="OULAD directory (default: ../shared/datasets/oulad from the cwd or the repo)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Dataset directory (default: DATA_DIR/datasets/oulad).")
    ] = None,
) -> None:
    """Map the Open University Learning Analytics Dataset (CC BY 4.0) into a learnrec dataset."""
    from features.oulad import load_oulad
    from features.settings import get_settings

    source = source or default_oulad_source()
    out = out or get_settings().datasets_dir / "oulad"
    started = time.perf_counter()
    with _data_errors(), progress_bars() as progress:
        ds, report = load_oulad(source, progress=progress)
        fingerprint = _write(ds, out, progress)
    for line in report.lines():
        typer.echo(line)
    _summary("wrote", out, ds.sizes, time.perf_counter() - started, f"fingerprint {fingerprint[:12]}")


@app.command("import")
def import_files(
    events: Annotated[Path, typer.Option(help="Events file (.csv UTF-8 or .parquet).")],
    out: Annotated[Path, typer.Option(help="Dataset directory to write (replaced atomically).")],
    students: Annotated[
        Path | None, typer.Option(help="Students file; derived from the events if absent.")
    ] = None,
    lectures: Annotated[
        Path | None, typer.Option(help="Lectures file; derived from the events if absent.")
    ] = None,
) -> None:
    """Import plain event files (and optional students / lectures files) as a validated dataset."""
    from features.event_files import load_event_files

    started = time.perf_counter()
    with _data_errors(), progress_bars() as progress:
        ds = load_event_files(events, students, lectures, progress=progress)
        fingerprint = _write(ds, out, progress)
    defaults = ds.manifest.get("defaults", {})
    derived = [name for name, was in ds.manifest.get("derived", {}).items() if was]
    notes = [f"{name.replace('_', ' ')}: {n:,}" for name, n in defaults.items() if n]
    if derived:
        notes.append("derived from events: " + " and ".join(derived))
    for note in notes:
        typer.echo(f"  {note}")
    _summary("wrote", out, ds.sizes, time.perf_counter() - started, f"fingerprint {fingerprint[:12]}")


@app.command()
def validate(
    directory: Annotated[Path, typer.Argument(help="Dataset directory to check.")],
) -> None:
    """Check a dataset directory: files present, schemas, unique ids, known values, ranges, references."""
    from features.tables import read_dataset

    started = time.perf_counter()
    with _data_errors(), progress_bars() as progress:
        progress("validating", 0, 1)
        ds = read_dataset(directory, validate=True)
        fingerprint = ds.fingerprint()
        progress("validating", 1, 1)
    recorded = ds.recorded_fingerprint()
    if recorded and recorded != fingerprint:
        typer.echo(
            "warning: the tables changed since the dataset was written "
            "(their fingerprint differs from manifest.json)",
            err=True,
        )
    elif recorded is None and ds.manifest.get("fingerprint"):
        typer.echo(
            f"note: manifest.json's fingerprint was computed by an earlier rule "
            f"({ds.manifest.get('fingerprint_version') or 'learnrec-fingerprint/1'}), so it is not compared: "
            f"that is not a change of the tables",
            err=True,
        )
    _summary("valid", directory, ds.sizes, time.perf_counter() - started, f"fingerprint {fingerprint[:12]}")


@app.command()
def synth(
    students: Annotated[
        int | None,
        typer.Option(min=1, help="Total students, spread over regions like the platform (default ~43k)."),
    ] = None,
    lectures: Annotated[int, typer.Option(min=1, help="Number of lectures.")] = 5_000,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: settings.seed).")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Dataset directory (default: DATA_DIR/datasets/synthetic).")
    ] = None,
    support_activity: Annotated[
        list[str] | None,
        typer.Option(
            "--support-activity",
            help="CATEGORY=FACTOR, repeatable: the assumed effect of a support category on behaviour "
            "(its students' activity rate times FACTOR; default none), e.g. basic_livelihood=0.8.",
        ),
    ] = None,
) -> None:
    """Generate a synthetic Seoul Learn-like dataset (deterministic for a seed)."""
    from features.settings import get_settings
    from features.synth import generate, scaled_config

    settings = get_settings()
    out = out or settings.datasets_dir / "synthetic"
    factors: dict[str, float] = {}
    for item in support_activity or []:
        name, sep, value = item.partition("=")
        try:
            factors[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise typer.BadParameter(
                f"expected CATEGORY=FACTOR, got {item!r}", param_hint="--support-activity"
            )
    try:
        config = scaled_config(students, lectures, settings.seed if seed is None else seed, factors)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--support-activity") from None
    started = time.perf_counter()
    with _data_errors(), progress_bars() as progress:
        summary = generate(config, out, progress)
    facts = summary.as_dict()
    shown = ", ".join(
        f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in facts.items() if _scalar(v)
    )
    typer.echo(f"wrote {out} in {time.perf_counter() - started:.1f} s: {shown}")


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None
