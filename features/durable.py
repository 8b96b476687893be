"""Durable file writes: fsync a directory's entries and swap a finished directory into place.

Used wherever learnrec replaces data a reader may be using (datasets, synthetic data, exported event
files): write everything into a sibling temporary directory, fsync it, then `swap_in`, so a crash leaves
either the old complete copy or the new one, never a half-written mix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries to disk (best effort: not every file system lets a directory be opened).

    Args:
        path: the directory.
    """
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def swap_in(tmp: Path, directory: Path) -> None:
    """Move the complete `tmp` directory to `directory`, replacing an existing one.

    The old directory is renamed aside first and put back if the rename of `tmp` fails; it is removed
    once the new one is in place.

    Args:
        tmp: the finished directory (a sibling of `directory`, same file system).
        directory: where it belongs.
    """
    if not directory.exists():
        tmp.rename(directory)
        fsync_dir(directory.parent)
        return
    old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
    directory.rename(old)
    try:
        tmp.rename(directory)
    except BaseException:
        old.rename(directory)  # put the previous one back
        raise
    fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
