"""What can go wrong, in two kinds that decide what happens next, the same in both runtimes.

- **Input** (:class:`CtDenoiseError` and its subclasses): the series or the parameters cannot be
  used (not DICOM, truncated, inconsistent, out of range...). Retrying cannot fix it: the task
  fails at once (the DAG's retry policy), the CLI and the pods exit with :data:`EXIT_INPUT`.
- **Transient** (:class:`TransientError`, and the storage, network, memory and Spark errors that
  :func:`classify` recognises): the same work may succeed later. The task retries with backoff,
  the CLI and the pods exit with :data:`EXIT_TRANSIENT`. A storage error is never a property of
  the file it happened on.

Anything else is a bug (:data:`EXIT_BUG`); it is retried too, and its traceback is logged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum


class CtDenoiseError(Exception):
    """An input or parameter problem the user can fix; the message names the file and the reason."""


class InputError(CtDenoiseError):
    """A file or series cannot be used (not DICOM, truncated, undecodable, inconsistent...)."""


class ParameterError(CtDenoiseError):
    """A command-line or DAG parameter is out of range."""


class TransientError(Exception):
    """Storage, network or capacity trouble: the same work may succeed later (retried)."""


class Failure(StrEnum):
    INPUT = "input"
    TRANSIENT = "transient"
    BUG = "bug"


EXIT_OK = 0
EXIT_BUG = 1
EXIT_INPUT = 2
EXIT_PARTIAL = 3
"""Some series of a folder were converted, others refused (each named on its own line)."""
EXIT_TRANSIENT = 75  # EX_TEMPFAIL of sysexits.h: "try again later"

EXIT_CODES = {Failure.INPUT: EXIT_INPUT, Failure.TRANSIENT: EXIT_TRANSIENT, Failure.BUG: EXIT_BUG}

# Exception class names (module-qualified where the name alone is ambiguous) of the libraries
# between us and S3 or Spark whose failures are about the service, not the data.
_TRANSIENT_NAMES = {
    "botocore.exceptions.BotoCoreError",
    "botocore.exceptions.ClientError",
    "aiohttp.client_exceptions.ClientError",
    "py4j.protocol.Py4JJavaError",
    "py4j.protocol.Py4JNetworkError",
}


# How an executor's Python exception appears in the Java error of a failed Spark stage.
_EXECUTOR_INPUT_ERROR = re.compile(r"^\s*ctdenoise\.(errors\.(InputError|ParameterError|CtDenoiseError)|geometry\.SeriesInputError):", re.M)


def classify(exc: BaseException) -> Failure:
    """Which kind of failure ``exc`` is (see the module docstring).

    A missing file or store is input (what was asked for is not there); every other ``OSError``
    (timeouts, refused connections, S3 5xx answers that s3fs turns into ``OSError``), memory
    exhaustion and the S3 and Spark client errors are transient, but a failed Spark stage whose
    executor raised an input error is input.
    """
    if isinstance(exc, CtDenoiseError | FileNotFoundError | NotADirectoryError | IsADirectoryError):
        return Failure.INPUT
    if isinstance(exc, TransientError | OSError | MemoryError | TimeoutError | ConnectionError):
        return Failure.TRANSIENT
    names = {f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__}
    if "py4j.protocol.Py4JJavaError" in names and _EXECUTOR_INPUT_ERROR.search(str(exc)):
        return Failure.INPUT  # a Spark stage failed because an executor found bad input
    return Failure.TRANSIENT if names & _TRANSIENT_NAMES else Failure.BUG


def exit_code(exc: BaseException) -> int:
    return EXIT_CODES[classify(exc)]


def is_transient(exc: BaseException) -> bool:
    return classify(exc) == Failure.TRANSIENT


@contextmanager
def about_the_data(describe: Callable[[BaseException], CtDenoiseError], *, storage: bool = False) -> Iterator[None]:
    """Inside this block a failure is the data's fault: it becomes ``describe(exc)``.

    Parsers and decoders fail in many ways (``ValueError``, ``struct.error``, even ``OSError``
    from Pillow) that :func:`classify` would call bugs or transient; on bytes already in memory
    they all mean the input is bad. With ``storage=True`` the block also reads storage, and
    what :func:`classify` calls transient passes through unchanged: a 503 never becomes a
    property of a file.
    """
    try:
        yield
    except CtDenoiseError:
        raise
    except Exception as exc:
        if storage and is_transient(exc):
            raise
        raise describe(exc) from exc


def one_line(exc: BaseException, limit: int = 500) -> str:
    """``exc`` as one line (its class and first line), for logs and ``error:`` messages."""
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    if not isinstance(exc, CtDenoiseError | TransientError):
        text = f"{exc.__class__.__name__}: {text}"
    return text[:limit]


def failure_of_exit(code: int | None) -> Failure:
    """The kind of failure a process's exit status reports: the CLI's, a pod's, a Spark driver's.

    :data:`EXIT_INPUT` is input (fail at once); :data:`EXIT_TRANSIENT` and deaths by a signal
    (128 + N: 137 an OOM kill or eviction, 143 a SIGTERM) are transient; anything else, or no
    status at all, is a bug (retried, like every failure that is not input)."""
    if code == EXIT_INPUT:
        return Failure.INPUT
    if code == EXIT_TRANSIENT or (code is not None and code > 128):
        return Failure.TRANSIENT
    return Failure.BUG
