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
