"""The ``ctdenoise`` console script: the same commands run in pods, Airflow tasks and by hand.

Failures print one ``error:`` line on stderr and exit with the status of their kind
(:mod:`ctdenoise.errors`: 2 bad input or parameters, 3 a partial conversion, 75 transient, 1 a
bug); results are printed as JSON lines on stdout so that callers (the DAG, XCom sidecars, shell
pipelines) can parse them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from ctdenoise.params import LocalParams, RankRules, SvdParams, add_arguments, from_arguments


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
    """Exit 0 when every CT series converted, 3 (partial) when some did and others were refused,
    2 when none could be (the refusals are input errors, named one per line)."""
    from ctdenoise.convert import convert
    from ctdenoise.errors import EXIT_INPUT, EXIT_OK, EXIT_PARTIAL
    from ctdenoise.records import Failed, Written

    written = failed = 0
    for outcome in convert(args.src, args.dst):
        _emit(outcome.to_xcom())
        written += isinstance(outcome, Written)
        failed += isinstance(outcome, Failed)
    if written == 0:
        print(f"error: no CT series could be converted from {args.src}", file=sys.stderr)
        return EXIT_INPUT
    return EXIT_PARTIAL if failed else EXIT_OK


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

    _emit(reconstruct(args.matrix, args.svd, args.dst, rank=args.rank, reference_url=args.reference, multiplier=args.multiplier))
    return 0


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
    p.set_defaults(func=cmd_reconstruct)
    return parser


class _OneLineFormatter(logging.Formatter):
    """Log records without tracebacks: libraries (pydicom's decoders) log expected failures with
    ``exc_info``, and a user should read one line per problem. ``--verbose`` keeps tracebacks."""

    def formatException(self, ei) -> str:  # noqa: N802 (logging's API)
        return ""

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a failure prints one ``error:`` line and exits with its kind's status
    (:mod:`ctdenoise.errors`: 2 input, 75 transient, 1 a bug, whose traceback ``-v`` shows)."""
    from ctdenoise.errors import Failure, classify, exit_code, one_line

    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt) if args.verbose else _OneLineFormatter(fmt))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
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
