"""The dssvd stage as the local runtime runs it, spark-submit of spark/dssvd.py, under S3 faults:
executors that cannot read the matrix fail the job as transient (exit 75: the task retries),
nothing is published, and the retry publishes both decompositions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from convert_fixtures import ct_series

from ctdenoise import storage
from ctdenoise.job import DssvdJob

pytestmark = [pytest.mark.slow, pytest.mark.spark]

REPO = Path(__file__).resolve().parents[2]


def spark_submit(args: list[str], endpoint: str) -> subprocess.CompletedProcess:
    submit = Path(sys.executable).parent / "spark-submit"
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_MAX_ATTEMPTS="1", SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join([str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")]))  # fmt: skip
    env.setdefault("JAVA_HOME", "/usr/lib/jvm/java-17-openjdk-amd64")
    command = [str(submit) if submit.exists() else "spark-submit", "--master", "local[2]", "--conf", "spark.ui.enabled=false",
               str(REPO / "spark" / "dssvd.py"), *args]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(shutil.which("java") is None and not Path("/usr/lib/jvm/java-17-openjdk-amd64/bin/java").exists(), reason="no Java")
def test_spark_job_under_503s_exits_75_and_publishes_nothing(pipeline) -> None:
    pipeline.upload("scan-a", ct_series(6, rows=32, columns=32))
    (series,) = pipeline.discover()
    converted = pipeline.convert(series)
    args = DssvdJob.for_series(converted).arguments()
    with pipeline.bucket.proxy.fault("503", r"/matrix/.*\.zarr/c/", method="GET") as fault:
        proc = spark_submit(args, pipeline.bucket.proxy.endpoint)
    assert fault.hits, "the executors read through the proxy"
    assert proc.returncode == 75, proc.stderr[-3000:]
    # spark-submit hands the driver's stderr to its stdout; its own log (the executors' failures) is on stderr
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert errors == ["error: Spark job failed: OSError: [Errno 16] Please reduce your request rate."], proc.stdout[-3000:]
    assert not storage.is_published(series.svd_url, pipeline.options)
    assert not storage.is_published(series.local_url, pipeline.options)
    proc = spark_submit(args, pipeline.bucket.proxy.endpoint)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(pipeline.plan(converted)) == 2
