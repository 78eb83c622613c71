"""What one ``ct_denoise`` run works on: series folders, settled uploads, the rank plan, the report.

These functions hold the decisions of the DAG; the tasks of both runtimes call them, and the
worker image (which has no Airflow) imports this module too, so it imports only the standard
library and :mod:`ctdenoise.storage` at module level.

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
    for its SeriesInstanceUID: results go to ``denoised/<SeriesInstanceUID>/``, and a series
    whose ``report.json`` carries the same parameter hash is skipped unless ``force``. Two
    folders of one partition with the same SeriesInstanceUID: the second is skipped.

Failure isolation
    A task of one series fails for that series only: convert and dssvd are mapped per series,
    dssvd and plan_ranks consume only what the successful instances returned (Airflow expands a
    task over the XComs its mapped upstream pushed), reconstruct is mapped per (series, rank)
    over the plan, and ``report`` (mapped over every discovered series) publishes ``report.json``
    only for a series whose every planned rank was written in this run; it fails, naming what
    is missing, for the others, which marks the run failed without holding back the good series.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from ctdenoise import storage
from ctdenoise.errors import InputError
from ctdenoise.local_params import LocalParams

log = logging.getLogger(__name__)

REPORT_JSON = "report.json"  # written last by ctdenoise.report.write_report: the completion marker
MATRIX_DIR = "matrix"
SVD_METHOD = "auto"  # dssvd.py picks exact (full spectrum) for up to 4096 slices, else stochastic
# Folder names end up in URLs, pod arguments (Jinja-templated) and labels: no braces, no '%'.
UNSAFE_FOLDER = re.compile(r"[{}%#\\]|^\.|^$")


# ---------------------------------------------------------------------------------------------
# Listing and the settled rule


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


# ---------------------------------------------------------------------------------------------
# discover_series


def series_record(
    *,
    folder: str,
    source_url: str,
    series_uid: str,
    ds: str,
    work_url: str,
    denoised_url: str,
    params: Mapping[str, Any],
    params_hash: str,
    svd_key: str,
    files: int,
    local_key: str | None = None,
) -> dict[str, Any]:
    """The dict that travels through the run for one series (XCom, pod arguments).

    ``svd_url`` is the global mode's SVD group, ``local_url`` the local mode's group (None when
    the run's ``modes`` leave that mode out).
    """
    folder_work = storage.join(work_url, folder)
    modes = list(params.get("modes") or ["global"])
    return {
        "folder": folder,
        "label": folder,
        "ds": ds,
        "source_url": source_url,
        "files": files,
        "series_instance_uid": series_uid,
        "matrix_dir": storage.join(folder_work, MATRIX_DIR),
        "matrix_url": storage.join(folder_work, MATRIX_DIR, f"{series_uid}.zarr"),
        "svd_url": storage.join(folder_work, f"svd-{svd_key}.zarr") if "global" in modes else None,
        "local_url": storage.join(folder_work, f"local-{local_key}.zarr") if "local" in modes and local_key else None,
        "series_url": storage.join(denoised_url, series_uid),
        "params": dict(params),
        "params_hash": params_hash,
    }


def first_ct_series_uid(fs: Any, files: Sequence[Mapping[str, Any]]) -> tuple[str | None, str]:
    """SeriesInstanceUID of the first CT slice among ``files`` (headers only), or ``(None, why)``.

    ``fs`` is the fsspec filesystem of the listing. Files are tried in name order; usually the
    first one answers with one ranged read (pydicom stops before the pixel data).
    """
    from pydicom.errors import InvalidDicomError

    from ctdenoise.dicom_series import IGNORED_NAMES, read_header, skip_reason

    if not files:
        return None, "empty folder"
    reasons: list[str] = []
    for f in files:
        path = f["path"]
        name = posixpath.basename(path)
        if name in IGNORED_NAMES:
            continue
        try:
            ds = read_header(fs, path, path)
        except InvalidDicomError:
            reasons.append(f"{name}: not DICOM")
            continue
        except Exception as exc:  # truncated headers fail in many ways; convert reports them precisely
            reasons.append(f"{name}: unreadable header ({exc.__class__.__name__})")
            continue
        reason = skip_reason(ds, name)
        if reason is None:
            return str(ds.SeriesInstanceUID).strip(), ""
        reasons.append(f"{name}: {reason}")
    summary = "; ".join(reasons[:3]) + (f"; ... ({len(reasons)} files)" if len(reasons) > 3 else "")
    return None, f"no CT image slice ({summary})"


def published_hash(report_url: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """The ``params_hash`` of a published ``report.json``, or None if there is none (or unreadable)."""
    try:
        data = json.loads(storage.read_bytes(report_url, storage_options))
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as exc:
        log.warning("%s: unreadable (%s); treated as not published", report_url, exc)
        return None
    value = data.get("params_hash") if isinstance(data, dict) else None
    return str(value) if value else None


def discover(
    partition_url: str,
    *,
    ds: str,
    work_url: str,
    denoised_url: str,
    params: Mapping[str, Any],
    params_hash: str,
    svd_key: str,
    local_key: str | None = None,
    settle_seconds: float = 0.0,
    storage_options: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """``(series to process, skipped folders with reasons)`` for one partition.

    ``params`` are normalized (:func:`ctdenoise.orchestration.params.normalize`); with
    ``params["force"]`` the already-published check is not applied.
    """
    fs, _ = storage.get_fs(partition_url, storage_options)
    listing = list_partition(partition_url, storage_options)
    unsettled = unsettled_folders(listing, settle_seconds, now)
    series: list[dict[str, Any]] = []
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
        uid, why = first_ct_series_uid(fs, files)
        if uid is None:
            skip(folder, why)
            continue
        if uid in seen:
            skip(folder, f"SeriesInstanceUID {uid} already in folder {seen[uid]} of this partition")
            continue
        seen[uid] = folder
        record = series_record(
            folder=folder,
            source_url=storage.join(partition_url, folder),
            series_uid=uid,
            ds=ds,
            work_url=work_url,
            denoised_url=denoised_url,
            params=params,
            params_hash=params_hash,
            svd_key=svd_key,
            local_key=local_key,
            files=len(files),
        )
        if not params.get("force"):
            found = published_hash(storage.join(record["series_url"], REPORT_JSON), storage_options)
            if found == params_hash:
                skip(folder, f"series {uid} already published with the same parameters ({params_hash}); set force to redo")
                continue
        series.append(record)
    return series, skipped


# ---------------------------------------------------------------------------------------------
# convert


def check_converted(series: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``written`` record of the folder's series; :class:`InputError` naming why if absent.

    Other CT series found in the same folder are converted by ``ctdenoise convert`` too, but
    only the folder's series (the one discover identified) goes on.
    """
    uid = series["series_instance_uid"]
    folder = series["folder"]
    written = [r for r in records if r.get("status") == "written"]
    mine = [r for r in written if r.get("series_instance_uid") == uid]
    others = [r.get("series_instance_uid") for r in written if r.get("series_instance_uid") != uid]
    if others:
        log.warning("folder %s holds other CT series too, not processed: %s", folder, ", ".join(map(str, others)))
    if mine:
        return dict(mine[0])
    failed = [r for r in records if r.get("status") == "failed" and r.get("series_instance_uid") == uid]
    reason = failed[0].get("reason") if failed else "no matrix written"
    raise InputError(f"series folder {folder} ({uid}): conversion failed: {reason}")


def convert_result(series: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The XCom of ``convert`` in both runtimes: the series and its conversion records."""
    written = check_converted(series, records)
    return {"series": dict(series), "matrix": written, "records": [dict(r) for r in records]}


def effective_svd_rank(converted: Mapping[str, Any]) -> int:
    """The SVD rank of one series: the requested rank, at most its number of slices."""
    series = converted["series"]
    slices = int(converted["matrix"].get("slices") or series["params"]["svd_rank"])
    return max(1, min(int(series["params"]["svd_rank"]), slices))


def dssvd_arguments(converted: Mapping[str, Any]) -> list[str]:
    """Arguments of ``spark/dssvd.py`` for one converted series (the local runtime's spark-submit;
    the SparkApplication of the kubernetes runtime renders the same from :func:`dssvd_values`)."""
    v = dssvd_values(converted)
    args = ["--matrix", v["matrix_url"]]
    if v["out_url"]:
        args += ["--out", v["out_url"], "--rank", str(v["rank"])]
    if v["local_out_url"]:
        args += ["--local-out", v["local_out_url"], *LocalParams.from_dict(v).job_arguments()]
    args += ["--oversample", str(v["oversample"]), "--power-iters", str(v["power_iters"]),
             "--seed", str(v["seed"]), "--method", v["method"]]  # fmt: skip
    return args


def dssvd_values(converted: Mapping[str, Any]) -> dict[str, Any]:
    """What the dssvd job of one converted series computes: which outputs, with which parameters."""
    series = converted["series"]
    p = series["params"]
    return {
        "matrix_url": series["matrix_url"],
        "out_url": series.get("svd_url"),
        "rank": effective_svd_rank(converted) if series.get("svd_url") else None,
        "local_out_url": series.get("local_url"),
        "tile": p.get("tile"),
        "stride": p.get("stride"),
        "multipliers": [float(m) for m in p.get("multipliers") or []],
        "shrinkage": p.get("shrinkage"),
        "inplane": p.get("inplane", "none"),
        "oversample": p["oversample"],
        "power_iters": p["power_iters"],
        "seed": p["seed"],
        "method": SVD_METHOD,
    }


# ---------------------------------------------------------------------------------------------
# plan_ranks


def _choice_dict(choice: Any) -> dict[str, Any]:
    """A :class:`ctdenoise.ranks.RankChoice` as the plan and the report want it.

    ``rules`` becomes the list of rule names; ``detail`` merges the details of every rule that
    chose the rank (e.g. the Gavish-Donoho threshold, the drop percent), ``rule_details`` keeps
    them apart.
    """
    data = choice.as_dict() if hasattr(choice, "as_dict") else dict(choice)
    rule_details = data.get("rules") or [{"rule": data.get("rule"), **dict(data.get("detail") or {})}]
    names: list[str] = []
    detail: dict[str, Any] = {}
    for item in rule_details:
        name = str(item.get("rule")) if isinstance(item, Mapping) else str(item)
        if name not in names:
            names.append(name)
        if isinstance(item, Mapping):
            detail.update({k: v for k, v in item.items() if k != "rule"})
    return {
        "rank": int(data["rank"]),
        "rules": names,
        "detail": detail,
        "rule_details": [dict(r) if isinstance(r, Mapping) else {"rule": str(r)} for r in rule_details],
    }


def plan_series(converted: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The reconstruct items of one converted series: (series, rank) for the global mode, from
    its SVD spectrum and the params, then (series, multiplier) for the local mode.

    Raises :class:`InputError` if the series has no usable SVD or local group (dssvd failed or
    left a stale one).
    """
    series = converted["series"]
    items: list[dict[str, Any]] = []
    if series.get("svd_url"):
        items += _plan_global(converted, storage_options)
    if series.get("local_url"):
        items += _plan_local(converted, storage_options)
    return items


def _plan_local(converted: Mapping[str, Any], storage_options: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """One item per threshold multiplier of the local group (each a reconstruct task)."""
    from ctdenoise.local_params import multiplier_label
    from ctdenoise.matrix_store import open_local

    series = converted["series"]
    folder, url = series["folder"], series["local_url"]
    if not storage.is_published(url, storage_options):
        raise InputError(f"series folder {folder}: no local low-rank group at {url} (dssvd failed?)")
    _, attrs = open_local(url, storage_options)
    if attrs.get("matrix_url") not in (None, series["matrix_url"]):
        raise InputError(f"{url}: computed from {attrs.get('matrix_url')}, not {series['matrix_url']} (stale)")
    summary = (attrs.get("summary") or {}).get("multipliers") or {}
    return [
        {
            "series": dict(series),
            "mode": "local",
            "rank": None,
            "multiplier": float(m),
            "rules": ["local"],
            "detail": {"multiplier": float(m), **{k: attrs.get(k) for k in ("tile", "stride", "shrinkage", "inplane")},
                       **(summary.get(multiplier_label(m)) or {})},  # fmt: skip
            "rule_details": [],
            "label": f"{folder} local {multiplier_label(m)}",
            "output_url": storage.join(series["series_url"], f"local-{multiplier_label(m)}"),
        }
        for m in attrs.get("multipliers") or []
    ]


def _plan_global(converted: Mapping[str, Any], storage_options: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The (series, rank) items of the global mode."""
    from ctdenoise.matrix_store import read_svd
    from ctdenoise.ranks import select_ranks

    series = converted["series"]
    folder, svd_url = series["folder"], series["svd_url"]
    if not storage.is_published(svd_url, storage_options):
        raise InputError(f"series folder {folder}: no SVD at {svd_url} (dssvd failed?)")
    s, _, attrs = read_svd(svd_url, storage_options)
    if attrs.get("matrix_url") not in (None, series["matrix_url"]):
        raise InputError(f"{svd_url}: computed from {attrs.get('matrix_url')}, not {series['matrix_url']} (stale)")
    shape = tuple(int(x) for x in attrs.get("matrix_shape") or ())
    if len(shape) != 2:
        raise InputError(f"{svd_url}: attribute matrix_shape missing or not [m, n]")
    p = series["params"]
    k = int(len(s))
    explicit = [r for r in p["ranks"] if r <= k]
    if len(explicit) < len(p["ranks"]):
        log.warning("series %s: ranks %s exceed the %d singular values computed; dropped",
                    folder, [r for r in p["ranks"] if r > k], k)
    if not explicit and not p["drop_percents"] and not p["auto_rank"]:
        raise InputError(f"series folder {folder}: every explicit rank exceeds its {k} singular values")
    choices = select_ranks(
        s,
        shape,
        ranks=explicit or None,
        drop_percents=p["drop_percents"] or None,
        auto=bool(p["auto_rank"]),
        frobenius_norm=attrs.get("frobenius_norm"),
    )
    merged: dict[int, dict[str, Any]] = {}
    for choice in choices:
        c = _choice_dict(choice)
        if c["rank"] < 1 or c["rank"] > k:
            log.warning("series %s: rank %d outside 1..%d dropped (%s)", folder, c["rank"], k, c["rules"])
            continue
        if c["rank"] in merged:  # select_ranks already merges; kept for other rank sources
            old = merged[c["rank"]]
            old["rules"] += [r for r in c["rules"] if r not in old["rules"]]
            old["detail"] = {**c["detail"], **old["detail"]}
            old["rule_details"] += c["rule_details"]
        else:
            merged[c["rank"]] = c
    return [
        {
            "series": dict(series),
            "mode": "global",
            "rank": rank,
            "multiplier": None,
            "rules": merged[rank]["rules"],
            "detail": merged[rank]["detail"],
            "rule_details": merged[rank]["rule_details"],
            "label": f"{folder} rank={rank}",
            "output_url": storage.join(series["series_url"], f"rank-{rank}"),
        }
        for rank in sorted(merged)
    ]


def plan(
    converted: Iterable[Mapping[str, Any]], storage_options: Mapping[str, Any] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """``(flat (series, rank) items for reconstruct, series left out with the reason)``."""
    items: list[dict[str, Any]] = []
    left_out: list[dict[str, str]] = []
    for one in converted:
        if not one:
            continue
        try:
            items.extend(plan_series(one, storage_options))
        except (InputError, FileNotFoundError) as exc:
            log.error("%s", exc)
            left_out.append({"folder": one["series"]["folder"], "reason": str(exc)})
    return items, left_out


# ---------------------------------------------------------------------------------------------
# reconstruct


def reconstruct_arguments(item: Mapping[str, Any]) -> list[str]:
    """``ctdenoise reconstruct`` arguments of one plan item (either mode)."""
    series = item["series"]
    if item.get("mode") == "local":
        return ["reconstruct", series["matrix_url"], series["local_url"], item["output_url"], "--multiplier", f"{item['multiplier']:g}"]
    return ["reconstruct", series["matrix_url"], series["svd_url"], item["output_url"], "--rank", str(item["rank"])]


def reconstruct_kwargs(item: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`ctdenoise.writer.reconstruct` arguments of one plan item (the local runtime's call)."""
    series = item["series"]
    if item.get("mode") == "local":
        return {"matrix_url": series["matrix_url"], "svd_url": series["local_url"], "dest_url": item["output_url"],
                "multiplier": float(item["multiplier"])}  # fmt: skip
    return {"matrix_url": series["matrix_url"], "svd_url": series["svd_url"], "dest_url": item["output_url"], "rank": int(item["rank"])}


def reconstruct_result(item: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The XCom of ``reconstruct`` in both runtimes: which output, and its metrics."""
    if not records:
        raise InputError(f"{item['label']}: ctdenoise reconstruct printed no metrics")
    return {
        "folder": item["series"]["folder"],
        "series_instance_uid": item["series"]["series_instance_uid"],
        "mode": item.get("mode", "global"),
        "rank": None if item.get("rank") is None else int(item["rank"]),
        "multiplier": item.get("multiplier"),
        "label": item["label"],
        "output_url": item["output_url"],
        "metrics": dict(records[-1]),
    }


# ---------------------------------------------------------------------------------------------
# report


def _as_list(value: Any) -> list[Any]:
    """XCom pulls give a value, a list, or None: always a list without Nones."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [value]
    return [v for v in value if v is not None]


def report_series(
    series: Mapping[str, Any],
    plan_items: Any,
    results: Any,
    run_info: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Publish the report of one series if it is complete; else :class:`InputError` naming what is missing.

    ``plan_items`` and ``results`` are the XComs of ``plan_ranks`` and ``reconstruct`` of this
    run (None, one dict or a list). Nothing is published for an incomplete series, so that
    ``report.json`` keeps meaning "complete" and the next run retries the series.
    """
    folder, uid = series["folder"], series["series_instance_uid"]
    where = f"series folder {folder} ({uid})"
    if not storage.is_published(series["matrix_url"], storage_options):
        raise InputError(f"{where}: not converted (see the convert task); no report published")
    planned = [i for i in _as_list(plan_items) if i["series"]["folder"] == folder]
    if not planned:
        raise InputError(f"{where}: no ranks planned (no SVD: see the dssvd and plan_ranks tasks); no report published")
    done = {r["output_url"]: r for r in _as_list(results) if r.get("folder") == folder}
    missing = [i for i in planned if i["output_url"] not in done]
    if missing:
        ranks_missing = [i["rank"] for i in missing if i.get("mode", "global") == "global"]
        local_missing = [f"x{i['multiplier']:g}" for i in missing if i.get("mode") == "local"]
        what = ([f"rank(s) {ranks_missing}"] if ranks_missing else []) + ([f"local multiplier(s) {local_missing}"] if local_missing else [])
        raise InputError(f"{where}: {' and '.join(what)} not reconstructed (see reconstruct); no report published")
    from ctdenoise.report import write_report

    ranks = [
        {
            "rank": i["rank"],
            "rules": i["rules"],
            "detail": i["detail"],
            "output_url": i["output_url"],
            "metrics": done[i["output_url"]]["metrics"],
        }
        for i in planned
        if i.get("mode", "global") == "global"
    ]
    local = [
        {
            "multiplier": i["multiplier"],
            "detail": i["detail"],
            "output_url": i["output_url"],
            "metrics": done[i["output_url"]]["metrics"],
        }
        for i in planned
        if i.get("mode") == "local"
    ]
    summary = write_report(
        matrix_url=series["matrix_url"],
        svd_url=series.get("svd_url"),
        series_url=series["series_url"],
        ranks=ranks,
        local=local,
        local_url=series.get("local_url"),
        run_info={
            **dict(run_info),
            "params": series["params"],
            "params_hash": series["params_hash"],
            "source_url": series["source_url"],
        },
        storage_options=storage_options,
    )
    return {
        "folder": folder,
        "series_instance_uid": uid,
        "source_url": series["source_url"],
        "report_json": storage.join(series["series_url"], REPORT_JSON),
        "report_html": summary.get("report_html"),
        "ranks": [{"rank": r["rank"], "rules": r["rules"], "output_url": r["output_url"]} for r in ranks],
        "local": [{"multiplier": r["multiplier"], "output_url": r["output_url"]} for r in local],
        "auto_rank": summary.get("auto_rank"),
        "params_hash": series["params_hash"],
    }
