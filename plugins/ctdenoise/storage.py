"""Where bytes live: fsspec URLs for local folders, ``file://`` and ``s3://`` alike.

Every producer in ctdenoise writes its output into a private local staging folder
(:func:`staging_dir`, see :mod:`ctdenoise.scratch`) and then *publishes* it with
:func:`publish_dir`. Publishing is what makes outputs atomic:

- on a local file system the staged folder is copied beside the destination and swapped into
  place (:func:`ctdenoise.replace.exchange`), so a reader sees either the old folder or the new
  one, never a mixture and never none;
- on object storage (S3 has no rename) every object is uploaded first and the *commit files*
  last: the root ``zarr.json`` of a Zarr store (a Zarr reader cannot open a store without it)
  or the ``_SUCCESS`` marker of a plain folder. Readers only trust prefixes whose commit file
  exists (:func:`is_published`). A plain folder that replaces a complete one is switched
  through its marker (:func:`ctdenoise.replace.swap_remote`), so that one complete version is
  there at every moment; readers follow the marker with :func:`published_root`.

A ``_SUCCESS`` marker names its publication (a random id, :func:`publication_id`): whoever
vouches for a folder (``report.json``) records the id and can tell later whether the folder is
still the one it vouched for.

S3 endpoint and credentials come from the environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``) or from explicit
``storage_options``; nothing is hard-coded.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec

from ctdenoise import replace, scratch

log = logging.getLogger(__name__)

SUCCESS_MARKER = "_SUCCESS"
ZARR_METADATA = "zarr.json"
READ_ATTEMPTS = 3
"""Reads of input objects (:func:`fetch`) tried this often before a transient failure is final."""
READ_BACKOFF_SECONDS = 1.0
"""Wait before the second attempt; doubled before each later one."""


def storage_options_from_env(protocol: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Options for fsspec filesystems that need them (S3 endpoint override for MinIO/moto).

    ``env`` defaults to the process environment; the local runtime passes the ``AWS_*`` view of
    an Airflow connection instead (:func:`ctdenoise.orchestration.aws.environment`).
    """
    env = os.environ if env is None else env
    if protocol in ("s3", "s3a"):
        options: dict[str, Any] = {}
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint_url"] = endpoint
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            options["key"], options["secret"] = key, secret
            if env.get("AWS_SESSION_TOKEN"):
                options["token"] = env["AWS_SESSION_TOKEN"]
        region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION")
        if region:
            options["client_kwargs"] = {"region_name": region}
        return options
    return {}


def get_fs(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the protocol-less path of ``url`` (plain paths are local)."""
    protocol = fsspec.utils.get_protocol(url)
    options = dict(storage_options) if storage_options is not None else storage_options_from_env(protocol)
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path


def is_local(url: str) -> bool:
    return fsspec.utils.get_protocol(url) in ("file", "local")


def local_path(url: str) -> Path:
    return Path(fsspec.core.url_to_fs(url)[1])


def join(url: str, *parts: str) -> str:
    """Join URL parts with '/', whatever the protocol."""
    out = url.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def basename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def exists(url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    fs, path = get_fs(url, storage_options)
    return fs.exists(path)


def is_published(url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """True when the folder or Zarr store at ``url`` was completely published."""
    fs, path = get_fs(url, storage_options)
    if url.rstrip("/").endswith(".zarr"):
        return fs.exists(f"{path.rstrip('/')}/{ZARR_METADATA}")
    return fs.exists(f"{path.rstrip('/')}/{SUCCESS_MARKER}")


def _marker(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``_SUCCESS`` marker of the folder ``url``, read; None when the folder is not published."""
    try:
        return replace.read_marker(read_bytes(join(url, SUCCESS_MARKER), storage_options))
    except FileNotFoundError:
        return None


def publication_id(url: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """The id in the ``_SUCCESS`` marker of a published folder (``""`` for an older, empty
    marker); None when the folder is not published."""
    marker = _marker(url, storage_options)
    return None if marker is None else str(marker.get("publication", ""))


def published_root(url: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """Where the complete files of the published folder ``url`` are right now: ``url`` itself,
    or during a replacement on S3 the sub-folder its marker names; None if not published."""
    marker = _marker(url, storage_options)
    if marker is None:
        return None
    return join(url, str(marker["at"])) if marker.get("at") else url


def remove(url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Delete one object or file if it exists (a completion marker being withdrawn)."""
    fs, path = get_fs(url, storage_options)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
    fs.invalidate_cache(path)


def remove_tree(url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Delete a folder or prefix and everything below it; True if there was something."""
    fs, path = get_fs(url, storage_options)
    if not fs.exists(path):
        return False
    fs.rm(path, recursive=True)
    return True


@contextmanager
def staging_dir(prefix: str = "ctdenoise-") -> Iterator[Path]:
    """A private local folder that disappears afterwards, whatever happens; one left by a
    killed process is removed when a later process stages (:mod:`ctdenoise.scratch`)."""
    with scratch.staging_area(prefix) as path:
        yield path


def _commit_files(staged: Path) -> list[Path]:
    """Files that must be written last: their presence declares the publication complete."""
    return [p for p in (staged / ZARR_METADATA, staged / SUCCESS_MARKER) if p.exists()]


def publish_dir(staged: Path, dest_url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Make the staged local folder visible at ``dest_url`` in one step (see module docstring).

    An existing destination is replaced, so a re-run overwrites instead of merging with stale
    objects. Plain folders get a ``_SUCCESS`` marker naming a new publication id if they do
    not carry a ``zarr.json``.
    """
    staged = Path(staged)
    publication = uuid.uuid4().hex
    if not (staged / ZARR_METADATA).exists():
        (staged / SUCCESS_MARKER).write_bytes(replace.marker(publication))
    if is_local(dest_url):
        _publish_local(staged, local_path(dest_url))
        return dest_url
    fs, dest = get_fs(dest_url, storage_options)
    dest = dest.rstrip("/")
    commit = _commit_files(staged)
    files = sorted(p for p in staged.rglob("*") if p.is_file() and p not in commit)
    if commit == [staged / SUCCESS_MARKER] and fs.exists(f"{dest}/{SUCCESS_MARKER}"):
        replace.swap_remote(fs, [(p, p.relative_to(staged).as_posix()) for p in files], dest, publication)
        return dest_url
    _withdraw_remote(fs, dest)
    for batch in (files, commit):  # the commit files only once everything else has landed
        if batch:
            fs.put([str(p) for p in batch], [f"{dest}/{p.relative_to(staged).as_posix()}" for p in batch])
    return dest_url


def open_publication(dest_url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Where several writers (Spark executors) build a store that :func:`commit_publication`
    then makes visible at ``dest_url``.

    Local: a hidden sibling folder, swapped with the destination at the commit. Remote: the
    destination itself, after withdrawing the old commit files and removing the old objects;
    nothing is visible there until the writer puts the commit file (``zarr.json``) last.
    """
    if is_local(dest_url):
        dest = local_path(dest_url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        scratch.sweep_siblings(dest)
        work = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
        work.mkdir()
        return str(work)
    fs, dest = get_fs(dest_url, storage_options)
    _withdraw_remote(fs, dest.rstrip("/"))
    return dest_url


def _withdraw_remote(fs: fsspec.AbstractFileSystem, dest: str) -> None:
    """Remove an old remote publication, its commit files first: a reader never sees an old
    marker over new data."""
    if fs.exists(dest):
        for marker in (ZARR_METADATA, SUCCESS_MARKER):
            if fs.exists(f"{dest}/{marker}"):
                fs.rm(f"{dest}/{marker}")
        fs.rm(dest, recursive=True)


def commit_publication(work_url: str, dest_url: str) -> None:
    """Finish :func:`open_publication` once the commit file is in ``work_url`` (local: the swap)."""
    if not is_local(dest_url) or work_url == dest_url:
        return
    replace.exchange(local_path(work_url), local_path(dest_url))


def abandon_publication(work_url: str, dest_url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Remove what a failed :func:`open_publication` writer left (never a committed store)."""
    if is_local(dest_url):
        if work_url != dest_url:
            shutil.rmtree(local_path(work_url), ignore_errors=True)
        return
    fs, path = get_fs(work_url, storage_options)
    if fs.exists(path) and not fs.exists(f"{path.rstrip('/')}/{ZARR_METADATA}"):
        fs.rm(path, recursive=True)


def _publish_local(staged: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch.sweep_siblings(dest)
    # Copy next to the destination first, so the final swap stays on one file system.
    sibling = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(staged, sibling)
        replace.exchange(sibling, dest)
    except BaseException:
        shutil.rmtree(sibling, ignore_errors=True)
        raise


def write_bytes(url: str, data: bytes, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write one small object in one PUT (atomic on S3; via rename locally)."""
    if is_local(url):
        path = local_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    fs, path = get_fs(url, storage_options)
    fs.pipe_file(path, data)


def read_bytes(url: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    fs, path = get_fs(url, storage_options)
    return fs.cat_file(path)


def fetch(fs: fsspec.AbstractFileSystem, path: str, url: str, end: int | None = None) -> bytes:
    """The first ``end`` bytes of one object (all of it by default), read again after a
    transient failure.

    A storage error is never a property of the file it happened on: after :data:`READ_ATTEMPTS`
    tries (backoff from :data:`READ_BACKOFF_SECONDS`, doubling) it becomes a
    :class:`~ctdenoise.errors.TransientError` naming ``url``, which fails the series as
    transient (retried) instead of passing the file off as unreadable. Input errors (a missing
    object) propagate unchanged.
    """
    from ctdenoise.errors import TransientError, is_transient, one_line

    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            return fs.cat_file(path, start=None if end is None else 0, end=end)
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == READ_ATTEMPTS:
                raise TransientError(f"{url}: storage error after {attempt} attempts: {one_line(exc)}") from exc
            log.warning("%s: read failed (%s); attempt %d of %d", url, one_line(exc), attempt + 1, READ_ATTEMPTS)
            time.sleep(READ_BACKOFF_SECONDS * 2 ** (attempt - 1))
    raise AssertionError("unreachable")
