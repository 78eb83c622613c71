"""Private scratch folders (staging areas, hidden siblings) and the removal of those a killed
process left behind: they hold patient data (DICOM headers, pixels) and must not pile up.

Staging areas
    Every producer stages its output locally before publishing it
    (:func:`ctdenoise.storage.staging_dir`). They live under one root per user,
    ``$TMPDIR/ctdenoise-staging-<uid>/`` (mode 0700), each with a lock file beside it that its
    process holds (``flock``) while it exists. A process that ends normally removes its area; one
    killed (SIGKILL, OOM) cannot, but the kernel releases its lock: the first staging area a
    later process opens removes every area whose lock it can take (and areas without a lock
    file older than :data:`STALE_AFTER_SECONDS`). Process ids are not used: they are reused.

Hidden siblings
    A local publication copies next to its destination first (``.<name>.tmp-<id>``) and renames
    it into place; a killed process leaves that copy. Each publication into a folder removes the
    hidden siblings of the same destination older than :data:`STALE_AFTER_SECONDS` (a
    publication takes minutes; a Spark job writing a local group at most its two-hour timeout).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

STALE_AFTER_SECONDS = 24 * 3600.0
"""Age after which an unlocked scratch folder or hidden sibling is taken as left by a killed process."""
GRACE_SECONDS = 60.0
"""A staging area younger than this is never removed (its process may be between creating the
folder and taking its lock)."""
LOCK_SUFFIX = ".lock"

_swept: set[Path] = set()  # staging roots already swept by this process


def staging_root() -> Path:
    """``$TMPDIR/ctdenoise-staging-<uid>``: the staging areas of this user, private (0700)."""
    root = Path(tempfile.gettempdir()) / f"ctdenoise-staging-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


@contextmanager
def staging_area(prefix: str) -> Iterator[Path]:
    """A new private folder under :func:`staging_root`, locked while it exists and removed
    afterwards, whatever happens. The first one of a process sweeps what killed processes left."""
    root = staging_root()
    if root not in _swept:
        _swept.add(root)
        sweep_staging(root)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    lock_path = path.with_name(path.name + LOCK_SUFFIX)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            lock_path.unlink(missing_ok=True)


def sweep_staging(root: Path, now: float | None = None) -> list[Path]:
    """Remove the staging areas under ``root`` whose process is gone; the folders removed."""
    removed = []
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        lock_path = path.with_name(path.name + LOCK_SUFFIX)
        if not _older_than(path, GRACE_SECONDS, now) or (lock_path.exists() and not _lock_is_free(lock_path)):
            continue  # just created, or its process is alive
        if not lock_path.exists() and not _older_than(path, STALE_AFTER_SECONDS, now):
            continue  # no lock to tell (made by an older version): only age decides
        shutil.rmtree(path, ignore_errors=True)
        lock_path.unlink(missing_ok=True)
        removed.append(path)
    for lock_path in root.glob("*" + LOCK_SUFFIX):  # locks whose folder is gone
        if not lock_path.with_name(lock_path.name[: -len(LOCK_SUFFIX)]).exists() and _lock_is_free(lock_path):
            lock_path.unlink(missing_ok=True)
    if removed:
        log.warning("removed %d staging folder(s) left by stopped processes under %s", len(removed), root)
    return removed


def sweep_siblings(dest: Path, now: float | None = None) -> list[Path]:
    """Remove the hidden siblings of ``dest`` (``.<name>.tmp-*``, ``.<name>.old-*``) older than
    :data:`STALE_AFTER_SECONDS`; the paths removed."""
    if not dest.parent.is_dir():
        return []
    removed = []
    for pattern in (f".{dest.name}.tmp-*", f".{dest.name}.old-*"):
        for path in dest.parent.glob(pattern):
            if _older_than(path, STALE_AFTER_SECONDS, now):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        log.warning("removed %d stale temporary sibling(s) of %s", len(removed), dest)
    return removed


def _lock_is_free(lock_path: Path) -> bool:
    try:
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
    except BlockingIOError:
        return False
    except OSError:
        return False


def _older_than(path: Path, seconds: float, now: float | None) -> bool:
    try:
        return (now or time.time()) - path.lstat().st_mtime > seconds
    except FileNotFoundError:
        return False
