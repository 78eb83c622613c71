"""The ``ctdenoise`` console script: the same commands run in pods, Airflow tasks and by hand.

Failures print one ``error:`` line on stderr and exit with the status of their kind
(:mod:`ctdenoise.errors`: 2 bad input or parameters, 3 a partial conversion, 75 transient, 1 a
bug); results are printed as JSON lines on stdout so that callers (the DAG, XCom sidecars, shell
pipelines) can parse them. Logging (:mod:`ctdenoise.logs`): one line per problem, each warning
once, no secrets; ``-v`` adds ctdenoise's debug output and tracebacks, not the S3 client's.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from ctdenoise.params import InputRules, LocalParams, ModeChoice, RankRules, RunParams, SvdParams, add_arguments, from_arguments


def _emit(record: dict) -> None:
    print(json.dumps(record, sort_keys=True), flush=True)


def cmd_phantom(args: argparse.Namespace) -> int:
    from ctdenoise.phantom import write_phantom_series

    _emit(
        write_phantom_series(
            args.out, size=args.size, slices=args.slices, photons=args.photons, seed=args.seed, truth=args.truth,
            body_scale=args.body_scale,
        )
    )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """The folder's status from its series' outcomes (:func:`convert_status`)."""
    from ctdenoise.convert import convert

    params = from_arguments(RunParams, args, args.src)  # the mode and input-rule flags; the rest default
    outcomes = []
    for outcome in convert(args.src, args.dst, params=params):
        _emit(outcome.to_xcom())
        outcomes.append(outcome)
    return convert_status(outcomes, args.src)


def convert_status(outcomes: Sequence[Any], src: str) -> int:
    """0 when every CT series converted; 75 when one failed for a transient reason (retry: the
    others are rewritten identically); 1 for a bug; else 3 (partial) when some converted and
    others were refused, 2 when none could be (each refusal is named on its own line)."""
    from ctdenoise.errors import EXIT_BUG, EXIT_INPUT, EXIT_OK, EXIT_PARTIAL, EXIT_TRANSIENT, Failure
    from ctdenoise.records import Failed, Written

    kinds = {o.kind for o in outcomes if isinstance(o, Failed)}
    written = sum(isinstance(o, Written) for o in outcomes)
    if Failure.TRANSIENT in kinds:
        print(f"error: some series of {src} failed for a transient reason (transient: retry later)", file=sys.stderr)
        return EXIT_TRANSIENT
    if Failure.BUG in kinds:
        print(f"error: some series of {src} failed unexpectedly (see the log)", file=sys.stderr)
        return EXIT_BUG
    if written == 0:
        print(f"error: no CT series could be converted from {src}", file=sys.stderr)
        return EXIT_INPUT
    return EXIT_PARTIAL if kinds else EXIT_OK


def cmd_svd(args: argparse.Namespace) -> int:
    from ctdenoise.decomposition import svd_numpy

    svd = from_arguments(SvdParams, args, args.matrix)
    _emit(svd_numpy(args.matrix, args.out, rank=args.rank, **svd.as_json()))
    return 0


def cmd_local(args: argparse.Namespace) -> int:
    from ctdenoise.local_group import local_numpy

    _emit(local_numpy(args.matrix, args.out, from_arguments(LocalParams, args, args.matrix)))
    return 0


def cmd_ranks(args: argparse.Namespace) -> int:
    from ctdenoise.matrix_store import read_svd
    from ctdenoise.ranks import select_ranks

    rules = from_arguments(RankRules, args, args.svd)
    s, _, attrs = read_svd(args.svd)
    shape = tuple(attrs["matrix_shape"])
    for choice in select_ranks(s, shape, rules.ranks, rules.drop_percents, rules.auto_rank, attrs.get("frobenius_norm")):
        _emit(choice.to_xcom())
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from ctdenoise.writer import reconstruct

    _emit(reconstruct(args.matrix, args.svd, args.dst, rank=args.rank, reference_url=args.reference, multiplier=args.multiplier,
                      series_description_prefix=args.series_description_prefix))  # fmt: skip
    return 0


def cmd_deliver(args: argparse.Namespace) -> int:
    """One JSON line (what was sent, refused and confirmed), then exit 0, 2 for a rejection
    (the line names the refused instances) or 75 for a destination down or not yet showing them."""
    from ctdenoise.delivery import deliver
    from ctdenoise.delivery.destinations import dicomweb_from_cli, dimse_from_cli
    from ctdenoise.errors import ParameterError

    if args.dicomweb:
        if args.called_ae or args.calling_ae:
            raise ParameterError("--called-ae and --calling-ae go with --dimse, not --dicomweb")
        destination = dicomweb_from_cli(args.dicomweb, timeout_seconds=args.timeout)
    else:
        if not args.called_ae:
            raise ParameterError("--dimse needs --called-ae (the destination's AE title)")
        destination = dimse_from_cli(args.dimse, args.called_ae, args.calling_ae, timeout_seconds=args.timeout)
    if not args.verbose:  # the outcome line and one error line say it all; -v shows every PDU
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
        logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
    outcome = deliver(args.src, destination, verify_seconds=args.verify_seconds)
    _emit(outcome.as_json())
    outcome.check()
    return 0


def cmd_decoders(args: argparse.Namespace) -> int:
    from ctdenoise.transfer_syntaxes import check

    return check()


def cmd_pools(args: argparse.Namespace) -> int:
    from ctdenoise.orchestration.pools import main

    return main(check_only=args.check)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctdenoise", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("phantom", help="simulate a low-dose CT series (DICOM)")
    p.add_argument("out", help="output folder or URL for the low-dose series")
    p.add_argument("--size", type=int, default=512, help="rows = columns (pixels)")
    p.add_argument("--slices", type=int, default=64)
    p.add_argument("--photons", type=float, default=2e4, help="incident photons per ray (dose)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truth", help="also write the noise-free phantom series here")
    p.add_argument("--body-scale", type=float, default=1.0,
                   help="the patient's size (1: about 32 cm across; 1.33: a large body, about 43 cm, photon-starved centre)")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("convert", help="DICOM series -> Zarr matrices (voxels x slices, HU)")
    p.add_argument("src", help="folder or fsspec URL prefix holding DICOM files")
    p.add_argument("dst", help="folder or URL receiving <SeriesInstanceUID>.zarr")
    add_arguments(p.add_argument_group("which series are accepted"), ModeChoice)
    add_arguments(p.add_argument_group("which series are accepted"), InputRules)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("svd", help="single-machine SVD of a matrix (the Spark job: spark/dssvd.py --out)")
    p.add_argument("matrix")
    p.add_argument("out")
    p.add_argument("--rank", type=int, required=True)
    add_arguments(p, SvdParams)
    p.set_defaults(func=cmd_svd)

    p = sub.add_parser("local", help="single-machine local low-rank denoising (the Spark job: spark/dssvd.py --local-out)")
    p.add_argument("matrix")
    p.add_argument("out", help="where to publish the local low-rank group (Zarr URL)")
    add_arguments(p, LocalParams)
    p.set_defaults(func=cmd_local)

    p = sub.add_parser("ranks", help="ranks to reconstruct from an SVD's spectrum")
    p.add_argument("svd")
    add_arguments(p, RankRules, exclude={"k"})
    p.set_defaults(func=cmd_ranks)

    p = sub.add_parser("reconstruct", help="write a denoised DICOM series (rank r, or local mode at a multiplier), preview and metrics")
    p.add_argument("matrix", help="series matrix (Zarr URL)")
    p.add_argument("svd", help="SVD group (global mode) or local low-rank group (local mode) (Zarr URL)")
    p.add_argument("dst", help="output folder or URL (e.g. .../denoised/<uid>/rank-<r> or .../local-x1)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--rank", type=int, help="global mode: the rank")
    which.add_argument("--multiplier", type=float, help="local mode: the threshold multiplier")
    p.add_argument("--reference", help="matrix of a reference (e.g. full-dose) series for PSNR/SSIM")
    p.add_argument("--series-description-prefix", default="DENOISED",
                   help="start of the derived SeriesDescription (default DENOISED; a label: UIDs do not depend on it)")  # fmt: skip
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("decoders", help="the supported DICOM transfer syntaxes and whether each is decodable here (exit 1 if not)")
    p.set_defaults(func=cmd_decoders)

    p = sub.add_parser("pools", help="create or update the DAG's Airflow pools (CT_DENOISE_*_POOL*); needs Airflow's database")
    p.add_argument("--check", action="store_true", help="only report missing pools (exit 2 if any)")
    p.set_defaults(func=cmd_pools)

    p = sub.add_parser("deliver", help="send one published output to a PACS (DICOMweb STOW-RS or DIMSE C-STORE), verified by query",
                       epilog="DICOMweb credentials come from DICOMWEB_USERNAME/DICOMWEB_PASSWORD or DICOMWEB_TOKEN, never "
                       "from the command line. Exit 0 delivered, 2 rejected, 75 destination down (retry later).")  # fmt: skip
    p.add_argument("src", help="one published output (folder or URL, e.g. .../denoised/<uid>/local-x0.5) or a folder of one series' DICOM files")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--dicomweb", metavar="URL", help="DICOMweb service root, e.g. http://pacs:8042/dicom-web")
    where.add_argument("--dimse", metavar="HOST:PORT", help="DICOM storage SCP")
    p.add_argument("--called-ae", help="--dimse: the destination's AE title")
    p.add_argument("--calling-ae", help="--dimse: our AE title (default CTDENOISE)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the destination's answers (default 30)")
    p.add_argument("--verify-seconds", type=float, default=30.0,
                   help="seconds the destination may take to show the instances in its query answers (default 30)")  # fmt: skip
    p.set_defaults(func=cmd_deliver)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a failure prints one ``error:`` line and exits with its kind's status
    (:mod:`ctdenoise.errors`: 2 input, 75 transient, 1 a bug, whose traceback ``-v`` shows)."""
    from ctdenoise.errors import Failure, classify, exit_code, one_line

    from ctdenoise import logs

    args = build_parser().parse_args(argv)
    logs.configure(args.verbose)
    try:
        return args.func(args)
    except Exception as exc:
        kind = classify(exc)
        if kind == Failure.BUG or args.verbose:
            logging.getLogger("ctdenoise.cli").debug("%s failed", args.command, exc_info=True)
        print(f"error: {one_line(exc)}" + (" (transient: retry later)" if kind == Failure.TRANSIENT else ""), file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
