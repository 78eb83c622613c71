"""Pod entry point of the kubernetes runtime: run one ``ctdenoise`` command, hand its result to XCom.

``KubernetesPodOperator`` pushes to XCom what the container writes to
``/airflow/xcom/return.json``; the ``ctdenoise`` CLI prints JSON lines on stdout. This wrapper
runs the CLI command given after ``--`` as a child process, echoes its output to the pod log,
and, if the command succeeded, writes the same JSON document that the local runtime's task
returns (a :class:`ctdenoise.records.Converted` or :class:`~ctdenoise.records.Reconstructed`),
so the downstream tasks read one format whichever runtime produced it::

    python -m ctdenoise.orchestration.podrun convert --task '<series JSON>' -- ctdenoise convert SRC DST
    python -m ctdenoise.orchestration.podrun reconstruct --task '<plan item JSON>' -- ctdenoise reconstruct ...

Exit status: decided by this task's own result, as the local runtime decides
(:meth:`ctdenoise.records.Converted.from_outcomes`): 0 when the folder's series was written,
whatever happened to other series of the folder (the command's 3, partial, or its 75 for
another series); else the kind of its failure (:mod:`ctdenoise.errors`: 2 input, 75 transient,
1 a bug). A command that printed no result exits with its own status.
Runs in the worker image: standard library and the ctdenoise package only, no Airflow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

XCOM_PATH = Path("/airflow/xcom/return.json")


def run_command(command: Sequence[str]) -> tuple[int, list[dict[str, Any]]]:
    """Run ``command``, echo stdout (stderr passes through), return its exit code and JSON lines."""
    records: list[dict[str, Any]] = []
    with subprocess.Popen(list(command), stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            text = line.strip()
            if text.startswith("{"):
                try:
                    records.append(json.loads(text))
                except json.JSONDecodeError:
                    pass
    return proc.returncode, records


def build_result(kind: str, task: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    from ctdenoise.records import Converted, Output, Reconstructed, Series, parse_outcome

    if kind == "convert":
        return Converted.from_outcomes(Series.from_xcom(task), [parse_outcome(r) for r in records]).to_xcom()
    if kind == "reconstruct":
        return Reconstructed.from_metrics(Output.from_xcom(task), records).to_xcom()
    raise ValueError(f"unknown task kind {kind!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctdenoise.orchestration.podrun", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["convert", "reconstruct"])
    parser.add_argument("--task", required=True, help="the series (convert) or plan item (reconstruct), JSON")
    parser.add_argument("--xcom", default=os.environ.get("CT_DENOISE_XCOM_PATH", str(XCOM_PATH)), help="XCom file")
    parser.epilog = "The command to run follows a lone '--': -- ctdenoise <command> ..."
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        parser.error("no command: give it after a lone '--'")
    split = argv.index("--")
    args, command = parser.parse_args(argv[:split]), argv[split + 1 :]
    if not command:
        parser.error("no command after '--'")
    task = json.loads(args.task)

    from ctdenoise.errors import EXIT_OK, exit_code, one_line

    code, records = run_command(command)
    if not records and code != EXIT_OK:  # failed before reporting anything (the command said why)
        return code
    try:
        result = build_result(args.kind, task, records)
    except Exception as exc:  # noqa: BLE001 (its kind is the pod's exit status)
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return exit_code(exc)
    xcom = Path(args.xcom)
    if xcom.parent.is_dir():
        xcom.write_text(json.dumps(result))
    else:
        print(f"warning: {xcom.parent} does not exist (no XCom sidecar); result not handed back", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
