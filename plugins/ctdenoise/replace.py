"""Replacing a published folder without a moment where none is complete.

A reader trusts a published folder by its commit marker (``_SUCCESS``, see
:mod:`ctdenoise.storage`). When a newer publication replaces an older one, some complete
version must be there at every instant, old or new, never a half-deleted or half-written one.

Local file systems: :func:`exchange`
    The new folder, complete, is built beside the destination and the two are swapped in one
    system call (Linux ``renameat2(RENAME_EXCHANGE)``); the old one is then removed. Where the
    call is not supported (other systems, some file systems) two renames are used, with a gap
    of two system calls, and a warning.

Object storage (S3): :func:`swap_remote`, write the new version beside the old, switch, retire
    S3 has no rename and no multi-object transaction, so the marker is the switch. Its content
    is a small JSON document (:func:`marker`): ``{"publication": <id>}`` says "the files are
    here"; ``{"publication": <id>, "at": ".gen-<id>"}`` says "the complete files are in that
    sub-folder". A replacement

    1. uploads the new files under ``<dest>/.gen-<id>/`` (invisible to marker-following readers);
    2. rewrites the marker to point there (one PUT: atomic);
    3. copies the new files into place (server-side copies) and deletes the old files the new
       version does not have;
    4. rewrites the marker to ``{"publication": <id>}`` and deletes ``.gen-*``.

    Readers that follow the marker (:func:`ctdenoise.storage.published_root`) always read one
    complete version; once done, the layout is the plain one every reader knows
    (``<dest>/dicom/IM0001.dcm``...). A process killed in between leaves a marker that points
    to a complete version; the next publication cleans up. Chosen over versioned folders for
    good (``<dest>/v<n>/``), which every consumer (the report, PACS delivery, people) would have
    to resolve for ever, at the price of copying the files once more on a replacement (first
    publications upload once, as before).

Zarr stores (the work area) are replaced by removing then writing (:mod:`ctdenoise.storage`):
only the run that replaces them reads them.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GENERATION_PREFIX = ".gen-"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_warned: set[str] = set()


def marker(publication: str, at: str | None = None) -> bytes:
    """The content of a ``_SUCCESS`` marker: the publication's id, and where its files are if not here."""
    return json.dumps({"publication": publication, **({"at": at} if at else {})}, sort_keys=True).encode()


def read_marker(data: bytes) -> dict[str, Any]:
    """A marker's content; ``{}`` for an empty (older) marker, which says "the files are here"."""
    try:
        value = json.loads(data.decode() or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def exchange(ready: Path, dest: Path) -> None:
    """Put the complete folder ``ready`` (beside ``dest``) in place of ``dest``; remove the old one."""
    if not dest.exists():
        os.replace(ready, dest)
        return
    if _renameat2_exchange(ready, dest):
        shutil.rmtree(ready, ignore_errors=True)  # ready now holds the old version
        return
    old = dest.parent / f".{dest.name}.old-{ready.name.rsplit('-', 1)[-1]}"
    os.replace(dest, old)
    os.replace(ready, dest)
    shutil.rmtree(old, ignore_errors=True)


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system or file system cannot."""
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is None:
        return _unsupported("renameat2 not available")
    result = function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return _unsupported(f"RENAME_EXCHANGE not supported here ({os.strerror(code)})")
    raise OSError(code, os.strerror(code), str(b))


def _unsupported(why: str) -> bool:
    if why not in _warned:
        _warned.add(why)
        log.warning("%s: a replaced local folder is briefly absent between two renames", why)
    return False


def swap_remote(fs: Any, files: list[tuple[Path, str]], dest: str, publication: str) -> None:
    """Replace the complete publication at ``dest`` with ``files`` (``(local file, relative key)``)
    without a gap (module docstring). ``dest`` has no trailing slash."""
    generation = f"{GENERATION_PREFIX}{publication}"
    staged = f"{dest}/{generation}"
    if files:
        fs.put([str(p) for p, _ in files], [f"{staged}/{rel}" for _, rel in files])
    fs.pipe_file(f"{dest}/_SUCCESS", marker(publication, at=generation))
    new = sorted({rel for _, rel in files})
    if new:  # lists on both sides: one concurrent batch, no per-file existence checks
        fs.copy([f"{staged}/{rel}" for rel in new], [f"{dest}/{rel}" for rel in new])
    fs.invalidate_cache(dest)
    keys = {key: _relative(key, dest) for key in fs.find(dest)}
    stale = [key for key, rel in keys.items() if rel not in {*new, "_SUCCESS"} and not rel.startswith(GENERATION_PREFIX)]
    if stale:
        fs.rm(stale)
    fs.pipe_file(f"{dest}/_SUCCESS", marker(publication))
    # every .gen-* sub-folder, this one and any a crashed publication left: the marker points to none
    generations = [key for key, rel in keys.items() if rel.startswith(GENERATION_PREFIX)]
    if generations:
        fs.rm(generations)
    fs.invalidate_cache(dest)


def _relative(key: str, dest: str) -> str:
    return key[len(dest) + 1 :] if key.startswith(dest + "/") else key
