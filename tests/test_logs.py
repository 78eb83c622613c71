"""Logging of the command-line programs: -v keeps secrets out, each warning is printed once."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convert_fixtures import ct_series, write_slices
from ctdenoise import logs

REPO = Path(__file__).resolve().parents[1]
SECRETS = {"AWS_ACCESS_KEY_ID": "AKIAFAKEKEY0001", "AWS_SECRET_ACCESS_KEY": "fake-secret-value-42", "AWS_SESSION_TOKEN": "fake-session-token-99"}


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    env = dict(env, PYTHONPATH=os.pathsep.join([str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "ctdenoise.cli", *args], capture_output=True, text=True, env=env, timeout=180)


def test_verbose_convert_to_s3_prints_no_credentials(tmp_path: Path, s3_bucket: str, s3_endpoint: str) -> None:
    """`-v` used to turn on botocore's debug log, which prints the request headers: the access key
    (in Authorization) and the session token."""
    write_slices(tmp_path / "src", ct_series(3, rows=16, columns=16))
    env = {**os.environ, **SECRETS, "AWS_ENDPOINT_URL": s3_endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    proc = _cli("-v", "convert", str(tmp_path / "src"), f"s3://{s3_bucket}/out", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DEBUG " in proc.stderr, "-v still turns on debug logging"
    leaked = [name for name, value in SECRETS.items() if value in proc.stderr + proc.stdout]
    assert not leaked, f"{leaked} printed with -v"


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom.valuerep")
def test_a_pydicom_warning_is_printed_once(tmp_path: Path) -> None:
    """pydicom says a bad value once as a log record and once as a Python warning, for every
    slice: one line in all."""
    slices = ct_series(4)
    for s in slices:
        s.dataset.add_new(0x00081010, "SH", "S" * 40)  # StationName longer than SH allows
    write_slices(tmp_path / "src", slices)
    proc = _cli("convert", str(tmp_path / "src"), str(tmp_path / "dst"), env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "exceeds the maximum length of 16" in line]
    assert len(lines) == 1, proc.stderr


def test_secrets_are_redacted_from_any_record() -> None:
    stream = io.StringIO()
    handler = logs.configure(False, env=SECRETS, stream=stream)
    try:
        logging.getLogger("ctdenoise.test").warning("header x-amz-security-token: %s", SECRETS["AWS_SESSION_TOKEN"])
    finally:
        logging.getLogger().removeHandler(handler)
        logging.captureWarnings(False)
    assert SECRETS["AWS_SESSION_TOKEN"] not in stream.getvalue() and "***" in stream.getvalue()


@pytest.mark.parametrize("verbose", [False, True])
def test_the_s3_clients_stay_quiet(verbose: bool) -> None:
    handler = logs.configure(verbose, env={}, stream=io.StringIO())
    try:
        assert logging.getLogger("botocore").getEffectiveLevel() >= logging.INFO
        assert logging.getLogger("aiobotocore.endpoint").getEffectiveLevel() >= logging.INFO
        assert logging.getLogger("ctdenoise").getEffectiveLevel() == (logging.DEBUG if verbose else logging.INFO)
    finally:
        logging.getLogger().removeHandler(handler)
        logging.captureWarnings(False)
