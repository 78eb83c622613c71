"""How a failed pod or Spark driver fails its task: by :mod:`ctdenoise.errors`' classification of its exit status.

The provider raises one ``AirflowException`` for every failed pod, whatever its exit status, and
the DAG's retry policy retries those. The pods run ``ctdenoise`` (through
:mod:`~ctdenoise.orchestration.podrun`) and the Spark driver runs ``spark/dssvd.py``; both exit
with the statuses of :mod:`ctdenoise.errors` (2 input, 75 transient, 1 a bug; a kill by signal
is 128 + N). :func:`raise_classified` turns an input failure into
:class:`~ctdenoise.errors.InputError`, which the retry policy fails at once, as the local
runtime's ``CtDenoiseError`` does; everything else keeps the provider's exception and retries.
"""

from __future__ import annotations

from typing import Any, NoReturn

from airflow.providers.cncf.kubernetes.utils.container import get_container_status

from ctdenoise.errors import Failure, InputError, failure_of_exit


def exit_code(remote_pod: Any, container: str) -> int | None:
    """The terminated exit code of ``container`` in ``remote_pod`` (None if it did not terminate)."""
    status = get_container_status(remote_pod, container) if remote_pod is not None else None
    terminated = status.state.terminated if status is not None and status.state is not None else None
    return None if terminated is None else terminated.exit_code


def raise_classified(exc: Exception, code: int | None, label: str, what: str, detail: str = "") -> NoReturn:
    """Re-raise ``exc`` (retried) unless ``code`` is an input failure: then one line naming
    ``label`` (the series or output) and ``what`` failed, as :class:`InputError` (not retried)."""
    if failure_of_exit(code) == Failure.INPUT:
        raise InputError(f"{label}: {what} exited with {code} (bad input or parameters{': ' + detail if detail else ''}; "
                         "see the log above); not retried") from exc  # fmt: skip
    raise exc
