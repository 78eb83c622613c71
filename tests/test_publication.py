"""Replacing a published output leaves no moment without a complete one, locally and on S3; the
completion marker is withdrawn first; what killed processes leave is cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_storage import _stage

from ctdenoise import storage

REPO = Path(__file__).resolve().parents[1]


OLD = {"dicom/IM0001.dcm": "old 1", "dicom/IM0002.dcm": "old 2", "dicom/IM0003.dcm": "old 3", "metrics.json": "old"}
NEW = {"dicom/IM0001.dcm": "new 1", "dicom/IM0002.dcm": "new 2", "metrics.json": "new"}


def complete_version(url: str, storage_options=None) -> dict[str, str] | None:  # noqa: ANN001
    """What a reader that trusts the marker reads now: all files of one version, or None. It
    follows the marker's ``at`` (a replacement on S3 in progress: see ctdenoise.replace)."""
    import json

    fs, path = storage.get_fs(url, storage_options)
    fs.invalidate_cache()
    try:
        marker = fs.cat_file(f"{path}/{storage.SUCCESS_MARKER}")
    except FileNotFoundError:
        return None
    at = (json.loads(marker or b"{}") or {}).get("at")
    root = f"{path}/{at}" if at else path
    found = {}
    for key in fs.find(root):
        rel = key[len(root.rstrip("/")) + 1 :]
        if rel != storage.SUCCESS_MARKER and not rel.startswith(".gen-"):
            found[rel] = fs.cat_file(key).decode()
    return found


def test_local_replacement_has_no_gap(tmp_path: Path) -> None:
    """Before every change the replacement makes (renames, removals), the destination holds one
    complete version. The old code renamed the old folder away, then the new one in: between the
    two, nothing."""
    dest = tmp_path / "denoised" / "uid" / "rank-5"
    storage.publish_dir(_stage(tmp_path, "a", OLD), str(dest))
    seen: list[dict[str, str] | None] = []

    def probe() -> None:
        seen.append(complete_version(str(dest)))

    real_replace, real_rmtree = os.replace, storage.shutil.rmtree

    def replace(src, dst, *args, **kwargs):  # noqa: ANN001
        probe()
        return real_replace(src, dst, *args, **kwargs)

    def rmtree(path, *args, **kwargs):  # noqa: ANN001
        probe()
        return real_rmtree(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", replace)
        patch.setattr(storage.shutil, "rmtree", rmtree)
        storage.publish_dir(_stage(tmp_path, "b", NEW), str(dest))
    assert complete_version(str(dest)) == NEW
    assert seen and all(v in (OLD, NEW) for v in seen), seen
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")], "no temporary siblings left"


def complete_version_boto3(bucket: str, prefix: str) -> dict[str, str] | None:
    """:func:`complete_version` through boto3 (s3fs cannot be called from inside its own calls)."""
    import json

    import boto3

    client = boto3.client("s3")
    try:
        marker = client.get_object(Bucket=bucket, Key=f"{prefix}/_SUCCESS")["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    at = (json.loads(marker or b"{}") or {}).get("at")
    root = f"{prefix}/{at}" if at else prefix
    found = {}
    for item in client.list_objects_v2(Bucket=bucket, Prefix=root + "/").get("Contents", []):
        rel = item["Key"][len(root) + 1 :]
        if rel != "_SUCCESS" and not rel.startswith(".gen-"):
            found[rel] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode()
    return found


def test_s3_replacement_has_no_gap(tmp_path: Path, s3_bucket: str) -> None:
    """The same on S3, probed before every object written, copied or removed: the old code
    withdrew the marker and deleted the old output before uploading the new one."""
    prefix = "denoised/uid/rank-5"
    url = f"s3://{s3_bucket}/{prefix}"
    storage.publish_dir(_stage(tmp_path, "a", OLD), url)
    old_id = getattr(storage, "publication_id", lambda url: None)(url)
    fs, _ = storage.get_fs(url)
    seen: list[dict[str, str] | None] = []

    def probing(real):  # noqa: ANN001
        async def wrapper(self, *args, **kwargs):  # noqa: ANN001
            seen.append(complete_version_boto3(s3_bucket, prefix))
            return await real(self, *args, **kwargs)

        return wrapper

    with pytest.MonkeyPatch.context() as patch:
        for name in ("_put_file", "_pipe_file", "_cp_file", "_rm_file", "_rm"):
            patch.setattr(type(fs), name, probing(getattr(type(fs), name)))
        storage.publish_dir(_stage(tmp_path, "b", NEW), url)
    assert len(seen) > 3 and all(v in (OLD, NEW) for v in seen), [None if v is None else sorted(v) for v in seen]
    assert complete_version(url) == NEW and storage.publication_id(url) not in (None, old_id)
    fs.invalidate_cache()
    assert storage.published_root(url) == url and not [k for k in fs.find(url) if "/.gen-" in k]


def test_reconstruct_withdraws_the_report_before_replacing_an_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """report.json vouches for the outputs as they were: it goes before one of them changes, so
    a replacement that fails leaves no marker claiming a complete series (the old code left it,
    and the next run skipped the series as already published)."""
    from writer_fixtures import build_case

    from ctdenoise.writer import reconstruct

    case = build_case(tmp_path / "case", size=32, slices=6)
    series = tmp_path / "denoised" / "uid"
    out = series / "rank-2"
    reconstruct(case.matrix_url, case.svd_url, str(out), rank=2)
    before = {p.name: p.read_bytes() for p in (out / "dicom").iterdir()}
    (series / "report.json").write_text('{"params_hash": "abc"}')

    def cut(*args, **kwargs):  # noqa: ANN002, ANN003
        raise ConnectionResetError("cut during publication")

    monkeypatch.setattr(storage, "publish_dir", cut)
    with pytest.raises(ConnectionResetError):
        reconstruct(case.matrix_url, case.svd_url, str(out), rank=3)
    assert not (series / "report.json").exists(), "report.json survived a change of its outputs"
    assert {p.name: p.read_bytes() for p in (out / "dicom").iterdir()} == before, "the old output stays whole"


STAGE_AND_DIE = """
import os, signal, sys
from ctdenoise import storage
with storage.staging_dir('ctdenoise-killed-') as d:
    (d / 'IM0001.dcm').write_bytes(b'patient data')
    print(d, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""
STAGE = "from ctdenoise import storage\nwith storage.staging_dir() as d:\n    print(d, flush=True)\n"


def _python(code: str, tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "plugins"), TMPDIR=str(tmp))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_staging_left_by_a_killed_process_is_removed_by_the_next(tmp_path: Path) -> None:
    killed = _python(STAGE_AND_DIE, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = Path(killed.stdout.strip())
    assert (left / "IM0001.dcm").exists(), "the killed process could not clean up"
    old = time.time() - 3600
    os.utime(left, (old, old))
    nxt = _python(STAGE, tmp_path)
    assert nxt.returncode == 0, nxt.stderr
    assert not left.exists(), "the next process that stages removes what a killed one left"
    assert not Path(nxt.stdout.strip()).exists()


def test_a_live_staging_area_is_never_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ctdenoise import scratch

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(scratch.tempfile, "tempdir", None)  # tempfile caches TMPDIR
    with storage.staging_dir() as mine:
        old = time.time() - 2 * scratch.STALE_AFTER_SECONDS
        os.utime(mine, (old, old))
        assert scratch.sweep_staging(mine.parent) == [] and mine.exists()
        assert _python(STAGE, tmp_path).returncode == 0 and mine.exists(), "another process leaves it alone"
    assert not mine.exists()


def test_stale_hidden_siblings_are_removed_by_the_next_publication(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "rank-5"
    stale = dest.parent / f".{dest.name}.tmp-deadbeef"
    fresh = dest.parent / f".{dest.name}.tmp-cafecafe"
    for path in (stale, fresh):
        path.mkdir(parents=True)
        (path / "IM0001.dcm").write_text("patient data")
    old = time.time() - 2 * 24 * 3600  # two days: older than any publication takes
    os.utime(stale, (old, old))
    storage.publish_dir(_stage(tmp_path, "a", NEW), str(dest))
    assert not stale.exists(), "left by a killed publication a day ago"
    assert fresh.exists(), "may belong to a publication in progress"
