"""Logging of the command-line programs (``ctdenoise``, ``spark/dssvd.py``): one line per problem,
each said once, no secrets.

- One line per record: libraries (pydicom's decoders, s3fs) log expected failures with
  ``exc_info``; tracebacks are shown with ``--verbose`` only (and for bugs, by the caller).
- ``--verbose`` is debug logging for ctdenoise, not for the libraries under it: botocore's and
  aiobotocore's debug output holds request headers (the access key in ``Authorization``, the
  session token), so they stay at INFO whatever the flag says.
- Secrets never reach the output: the values of :data:`SECRET_VARIABLES` found in the
  environment are replaced by ``***`` in every message.
- Each warning once: pydicom reports a dubious value both as a Python warning and as a log
  record, and again for every slice of a series; Python warnings go to logging and a message
  already printed is not printed again.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping

SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
QUIET_LIBRARIES = ("botocore", "aiobotocore", "boto3", "s3transfer", "s3fs", "fsspec", "urllib3", "aiohttp", "asyncio", "py4j")
FORMAT = "%(levelname)s %(name)s: %(message)s"


class OneLineFormatter(logging.Formatter):
    """Log records without tracebacks (``--verbose`` uses the plain formatter)."""

    def formatException(self, ei) -> str:  # noqa: N802 (logging's API)
        return ""

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return ""


class Redact(logging.Filter):
    """Replace secret values in a record's final message by ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        values = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        self.pattern = re.compile("|".join(re.escape(v) for v in values)) if values else None

    def filter(self, record: logging.LogRecord) -> bool:
        if self.pattern is not None:
            message = record.getMessage()
            redacted = self.pattern.sub("***", message)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


class Once(logging.Filter):
    """Drop a warning whose text was already printed (pydicom: once as a log record and once as
    a Python warning, and for every slice)."""

    _WARNING_PREFIX = re.compile(r"^.*?:\d+: \w+: ")  # "file.py:440: UserWarning: " of captured warnings

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        text = record.getMessage()
        if record.name == "py.warnings":
            text = self._WARNING_PREFIX.sub("", text.strip().splitlines()[0] if text.strip() else text)
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


def configure(verbose: bool = False, env: Mapping[str, str] | None = None, stream=None) -> logging.Handler:  # noqa: ANN001
    """Set up the root logger of a command-line program; the handler it installed."""
    env = os.environ if env is None else env
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT) if verbose else OneLineFormatter(FORMAT))
    handler.addFilter(Redact(env.get(name, "") for name in SECRET_VARIABLES))
    handler.addFilter(Once())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    logging.captureWarnings(True)
    return handler
