"""What one ``ct_denoise`` run works on: the series folders of a partition, once their upload settled.

These functions hold the orchestration's decisions before any series is converted; the sensor and
``discover_series`` call them. Imports: the standard library and the package's light modules
(no numpy; pydicom only inside :func:`first_ct_header`).

Series folders
    A run processes the arrival partition ``<incoming>/<ds>/``: each folder directly below it
    holds one uploaded series (any file names; DICOMDIRs and non-CT files are skipped by
    convert). Objects directly in the partition, outside a folder, are ignored with a warning.

Upload settled (the rule that keeps half-uploaded series out)
    S3 shows an object only once its upload has completed, but a series is many objects. A
    folder is *settled* when none of its objects was modified during the last
    ``settle_seconds`` (S3 ``LastModified``). ``wait_for_settled_upload`` waits until every
    folder of the partition is settled (or, after ``CT_DENOISE_SETTLE_TIMEOUT_SECONDS``, goes on
    with the settled ones); ``discover_series`` checks again and leaves out a folder that is
    still changing (a later run with the same parameters picks it up). Unlike
    ``S3KeysUnchangedSensor``, whose state lives in the sensor process, the rule is stateless,
    so the sensor can release its worker slot between pokes (reschedule mode), and it looks at
    each folder, not only at the key count of the whole prefix. ``LastModified`` of a multipart
    upload is the time the upload *started*: ``settle_seconds`` must exceed the longest
    single-file upload (the default, 5 minutes, covers DICOM slices of a few MB many times over).

Identity and "already published"
    ``discover_series`` reads the header of the first CT slice of each folder (one ranged read)
    for the run's selection rules (:mod:`ctdenoise.selection`: a folder none takes is skipped,
    never converted) and for its SeriesInstanceUID (a folder whose UID is not a valid DICOM UID
    is skipped): results go to ``denoised/<SeriesInstanceUID>/``, and a series whose
    ``report.json`` carries the same parameter hash, and still vouches for every output it lists
    (:mod:`ctdenoise.completion`), is skipped unless ``force``. Two folders of one partition
    with the same SeriesInstanceUID: the second is skipped. Storage errors fail the task (it is
    retried): a folder is never left out of its own date's run because S3 stumbled.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from ctdenoise import layout, storage
from ctdenoise.params import RunParams
from ctdenoise.records import Series

log = logging.getLogger(__name__)

# Folder names end up in URLs, pod arguments (Jinja-templated) and labels: no braces, no '%'.
UNSAFE_FOLDER = re.compile(r"[{}%#\\]|^\.|^$")


def modified_time(info: Mapping[str, Any]) -> datetime | None:
    """``LastModified`` (S3) or ``mtime`` (local files) of an fsspec info dict, as aware UTC."""
    value = info.get("LastModified", info.get("mtime"))
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(float(value), tz=timezone.utc)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def forget_listings(fs: Any, root: str) -> None:
    """Drop the cached listings of ``root``, of its parents and of every folder below it.

    ``invalidate_cache(root)`` alone keeps the folders below ``root``, and s3fs's ``find`` caches
    the listing of each sub-folder it sees but never refreshes one it already holds: a series
    folder listed while half uploaded would stay half listed for every later reader in the same
    process (the filesystem instance is shared), and ``convert`` would then fail to open the
    newer slices (FileNotFoundError) although its own listing shows them.
    """
    fs.invalidate_cache(root)
    cache = getattr(fs, "dircache", None)
    if cache is not None:
        for key in [k for k in list(cache) if k == root or k.startswith(root + "/")]:
            cache.pop(key, None)


def list_partition(
    partition_url: str, storage_options: Mapping[str, Any] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """``{folder: [{"path", "size", "modified"}, ...]}`` of the series folders of a partition.

    Listings are never served from a cache (sensors list the same prefix again and again), and
    none is left behind (:func:`forget_listings`). A missing partition is an empty one.
    """
    fs, root = storage.get_fs(partition_url, storage_options)
    root = root.rstrip("/")
    forget_listings(fs, root)
    if not fs.exists(root):
        return {}
    try:
        found = fs.find(root, detail=True)
    finally:
        forget_listings(fs, root)
    folders: dict[str, list[dict[str, Any]]] = {}
    loose: list[str] = []
    for path, info in sorted(found.items()):
        if info.get("type") == "directory":
            continue
        rel = path[len(root) + 1 :] if path.startswith(root + "/") else posixpath.basename(path)
        folder, sep, _ = rel.partition("/")
        if not sep:
            loose.append(rel)
            continue
        folders.setdefault(folder, []).append(
            {"path": path, "size": int(info.get("size") or 0), "modified": modified_time(info)}
        )
    if loose:
        log.warning("%s: %d object(s) outside series folders ignored (e.g. %s)", partition_url, len(loose), loose[0])
    return folders


def unsettled_folders(
    listing: Mapping[str, Sequence[Mapping[str, Any]]], settle_seconds: float, now: datetime | None = None
) -> dict[str, float]:
    """``{folder: seconds since its newest object}`` for folders that changed too recently."""
    now = now or datetime.now(timezone.utc)
    out: dict[str, float] = {}
    for folder, files in listing.items():
        times = [f["modified"] for f in files if f.get("modified") is not None]
        if not times:
            continue  # no timestamps (unusual file systems): nothing to wait for
        age = (now - max(times)).total_seconds()
        if age < settle_seconds:
            out[folder] = round(age, 1)
    return out


def settled_state(
    partition_url: str,
    settle_seconds: float,
    storage_options: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """What ``wait_for_settled_upload`` reports at each poke: folders, file counts, unsettled ages."""
    listing = list_partition(partition_url, storage_options)
    unsettled = unsettled_folders(listing, settle_seconds, now)
    return {
        "partition": partition_url,
        "folders": {folder: len(files) for folder, files in listing.items()},
        "unsettled": unsettled,
        "settled": bool(listing) and not unsettled,
    }


def slice_files(files: Sequence[Mapping[str, Any]]) -> int:
    """The files of a series folder that may be slices (our commit markers left out): what the
    selection rules call ``slices`` (counting decoded slices would read every header)."""
    from ctdenoise.dicom_series import IGNORED_NAMES

    return sum(posixpath.basename(f["path"]) not in IGNORED_NAMES for f in files)


def first_ct_header(fs: Any, files: Sequence[Mapping[str, Any]]) -> tuple[Any, str]:
    """The header of the first CT slice among ``files`` (a pydicom Dataset without pixel data),
    or ``(None, why)``.

    ``fs`` is the fsspec filesystem of the listing. Files are tried in name order; usually the
    first one answers with one ranged read (pydicom stops before the pixel data). A UID that is
    not a valid DICOM UID names no folder (``denoised/<uid>/``): the folder is skipped. Storage
    errors are not the file's fault: they propagate (the task retries) instead of skipping it.
    """
    from pydicom.errors import InvalidDicomError

    from ctdenoise.dicom_series import IGNORED_NAMES, UnreadableHeader, read_header, skip_reason
    from ctdenoise.uids import shown, uid_problem

    if not files:
        return None, "empty folder"
    reasons: list[str] = []
    for f in files:
        path = f["path"]
        name = posixpath.basename(path)
        if name in IGNORED_NAMES:
            continue
        try:
            ds, _ = read_header(fs, path, path, f.get("size"))
        except InvalidDicomError:
            reasons.append(f"{name}: not DICOM")
            continue
        except UnreadableHeader as exc:  # convert reports it precisely, and fails the series for it
            reasons.append(f"{name}: {exc}")
            continue
        reason = skip_reason(ds, name)
        if reason is None:
            problem = uid_problem(str(ds.get("SeriesInstanceUID", "") or "").strip())
            if problem:
                return None, f"{name}: SeriesInstanceUID {shown(str(ds.get('SeriesInstanceUID', '')))} is not a valid DICOM UID: {problem}"
            return ds, ""
        reasons.append(f"{name}: {reason}")
    summary = "; ".join(reasons[:3]) + (f"; ... ({len(reasons)} files)" if len(reasons) > 3 else "")
    return None, f"no CT image slice ({summary})"


def published_hash(report_url: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """The ``params_hash`` of a published ``report.json`` when it may be trusted (every output it
    vouches for still published as it saw it: :func:`ctdenoise.completion.trusted_hash`), else None."""
    from ctdenoise.completion import trusted_hash

    return trusted_hash(report_url.rstrip("/").rsplit("/", 1)[0], storage_options)


def discover(
    partition_url: str,
    *,
    ds: str,
    work_url: str,
    denoised_url: str,
    params: RunParams,
    settle_seconds: float = 0.0,
    storage_options: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> tuple[list[Series], list[dict[str, str]]]:
    """``(series to process, skipped folders with reasons)`` for one partition; with
    ``params.force`` the already-published check is not applied. A folder the run's selection
    rules exclude is skipped with the condition that excluded it (:mod:`ctdenoise.selection`);
    a series skipped as already published carries its ``published`` series URL (its outputs
    may still be due for delivery)."""
    fs, _ = storage.get_fs(partition_url, storage_options)
    listing = list_partition(partition_url, storage_options)
    unsettled = unsettled_folders(listing, settle_seconds, now)
    series: list[Series] = []
    skipped: list[dict[str, str]] = []
    seen: dict[str, str] = {}

    def skip(folder: str, reason: str) -> None:
        log.warning("series folder %s skipped: %s", folder, reason)
        skipped.append({"folder": folder, "reason": reason})

    for folder, files in sorted(listing.items()):
        if UNSAFE_FOLDER.search(folder):
            skip(folder, "folder name has characters kept out of URLs and pod arguments ({ } % # \\ or a leading dot)")
            continue
        if folder in unsettled:
            skip(folder, f"upload not settled (last change {unsettled[folder]} s ago < {settle_seconds} s); a later run takes it")
            continue
        header, why = first_ct_header(fs, files)
        if header is None:
            skip(folder, why)
            continue
        excluded = params.selection.excluded_by(header, slice_files(files))
        if excluded:
            skip(folder, excluded)
            continue
        uid = str(header.SeriesInstanceUID).strip()
        if uid in seen:
            skip(folder, f"SeriesInstanceUID {uid} already in folder {seen[uid]} of this partition")
            continue
        seen[uid] = folder
        record = Series(folder=folder, ds=ds, source_url=storage.join(partition_url, folder), files=len(files),
                        series_instance_uid=uid, work_url=storage.join(work_url, folder), denoised_url=denoised_url,
                        params=params)  # fmt: skip
        if not params.force and published_hash(layout.report_json(record.series_url), storage_options) == record.params_hash:
            skip(folder, f"series {uid} already published with the same parameters ({record.params_hash}); set force to redo")
            skipped[-1]["published"] = record.series_url  # its outputs may still be due for delivery
            continue
        series.append(record)
    return series, skipped
