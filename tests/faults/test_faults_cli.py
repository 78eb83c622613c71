"""The command line under S3 faults: one ``error:`` line, no traceback, the exit status of the
failure's kind (75: retry), never a series published with a slice missing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from convert_fixtures import ct_series
from fault_env import DS

from ctdenoise import storage

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, endpoint: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_MAX_ATTEMPTS="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")]))  # fmt: skip
    return subprocess.run([sys.executable, "-m", "ctdenoise.cli", *args], capture_output=True, text=True, env=env, timeout=300)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(("kind", "after"), [("503", 0), ("reset", 1)], ids=["503-header", "reset-pixels"])
def test_convert_under_a_persistent_fault_exits_75_on_one_line(pipeline, kind: str, after: int) -> None:
    """On a header the listing's scan fails as a whole (the file's series is not known yet);
    on the pixels its series fails, as transient. Either way: 75, one line naming the file."""
    pipeline.upload("scan-a", ct_series(6, rows=32, columns=32))
    src, dst = pipeline.bucket.url("incoming", DS, "scan-a"), pipeline.bucket.url("work", "m")
    with pipeline.bucket.proxy.fault(kind, r"/scan-a/IM0004\.dcm$", method="GET", after=after):
        proc = cli("convert", src, dst, endpoint=pipeline.bucket.proxy.endpoint)
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    if after:
        (failed,) = records
        assert failed["status"] == "failed" and failed["kind"] == "transient" and "IM0004.dcm" in failed["reason"]
        assert line == f"error: some series of {src} failed for a transient reason (transient: retry later)"
    else:
        assert records == [] and "IM0004.dcm" in line and line.endswith("(transient: retry later)")
    assert not pipeline.bucket.keys("work", "m"), "nothing published"
    proc = cli("convert", src, dst, endpoint=pipeline.bucket.proxy.endpoint)
    (written,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0 and written["slices"] == 6


def test_an_unreachable_s3_is_one_line_and_75(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = cli("reconstruct", "s3://nowhere/m.zarr", "s3://nowhere/svd.zarr", "s3://nowhere/out", "--rank", "2",
               endpoint=f"http://127.0.0.1:{port}")  # fmt: skip
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3, proc.stderr
    (line,) = error_lines(proc.stderr)
    assert line.endswith("(transient: retry later)")


def test_convert_with_the_pipeline_publishes_all_slices_or_none(pipeline) -> None:
    """The issue's case with the CLI: one slice's header answered 503 once. All 6 slices or a
    failure, never 5 published with exit 0."""
    pipeline.upload("scan-a", ct_series(6, rows=32, columns=32))
    src, dst = pipeline.bucket.url("incoming", DS, "scan-a"), pipeline.bucket.url("work", "m")
    with pipeline.bucket.proxy.fault("503", r"/scan-a/IM0003\.dcm$", method="GET", times=1):
        proc = cli("convert", src, dst, endpoint=pipeline.bucket.proxy.endpoint)
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0 and [r["slices"] for r in records] == [6], proc.stderr[-2000:]
    assert storage.is_published(records[0]["url"])
