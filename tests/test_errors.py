"""One classification of failures, input versus transient, for the CLI, the pods and the DAG."""

from __future__ import annotations

import errno

import pytest

from ctdenoise.errors import (
    EXIT_BUG,
    EXIT_INPUT,
    EXIT_TRANSIENT,
    Failure,
    InputError,
    ParameterError,
    TransientError,
    classify,
    exit_code,
    one_line,
)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (InputError("x.dcm: truncated"), Failure.INPUT),
        (ParameterError("k: out of range"), Failure.INPUT),
        (FileNotFoundError("s3://b/missing.zarr"), Failure.INPUT),
        (TransientError("S3 answered 503"), Failure.TRANSIENT),
        (OSError(errno.EIO, "Service Unavailable"), Failure.TRANSIENT),  # what s3fs makes of a 503
        (ConnectionResetError("peer reset"), Failure.TRANSIENT),
        (TimeoutError("read timed out"), Failure.TRANSIENT),
        (MemoryError(), Failure.TRANSIENT),
        (KeyError("rows"), Failure.BUG),
    ],
)
def test_every_failure_has_one_kind(exc: BaseException, kind: Failure) -> None:
    assert classify(exc) == kind
    assert exit_code(exc) == {Failure.INPUT: EXIT_INPUT, Failure.TRANSIENT: EXIT_TRANSIENT, Failure.BUG: EXIT_BUG}[kind]


def test_client_errors_of_s3_and_spark_are_transient() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    throttled = ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate"}}, "GetObject")
    assert classify(throttled) == Failure.TRANSIENT
    assert classify(EndpointConnectionError(endpoint_url="http://127.0.0.1:1")) == Failure.TRANSIENT


def test_transient_errors_are_not_retried_away_by_the_input_rule() -> None:
    """The DAG fails CtDenoiseError at once: a transient error must not be one."""
    from ctdenoise.errors import CtDenoiseError

    assert not issubclass(TransientError, CtDenoiseError)


def test_one_line() -> None:
    assert one_line(InputError("a.dcm:\n  truncated")) == "a.dcm: truncated"
    assert one_line(KeyError("rows")) == "KeyError: 'rows'"
    assert len(one_line(ValueError("x" * 2000))) == 500


def test_about_the_data_blames_the_bytes_but_not_the_storage() -> None:
    from ctdenoise.errors import about_the_data

    def describe(exc: BaseException) -> InputError:
        return InputError(f"x.dcm: {one_line(exc)}")

    for raised in (ValueError("bad length"), OSError("cannot identify image file"), KeyError("Rows")):
        with pytest.raises(InputError, match="x.dcm"):
            with about_the_data(describe):  # in memory: even Pillow's OSError is the data's fault
                raise raised
    with pytest.raises(ConnectionResetError):
        with about_the_data(describe, storage=True):  # reading storage: a reset stays transient
            raise ConnectionResetError("peer reset")
    with pytest.raises(InputError, match="x.dcm: FileNotFoundError"):
        with about_the_data(describe, storage=True):
            raise FileNotFoundError("gone")


def test_a_spark_stage_failed_by_bad_input_is_input() -> None:
    """A Py4JJavaError carries the executor's Python exception in its text."""
    py4j_error = type("Py4JJavaError", (Exception,), {"__module__": "py4j.protocol"})
    bad = py4j_error("An error occurred while calling o42.collect.\n  File \"x.py\", line 1\nctdenoise.errors.InputError: m.zarr: cannot read rows 0:512: ValueError: bad chunk\n\tat org.apache.spark")
    lost = py4j_error("An error occurred while calling o42.collect.\nOSError: [Errno 16] Please reduce your request rate.\n\tat org.apache")
    assert classify(bad) == Failure.INPUT and exit_code(bad) == EXIT_INPUT
    assert classify(lost) == Failure.TRANSIENT
