"""Where each product of a series lives, relative to the bucket's prefixes: the one naming rule.

::

    <work>/<ds>/<folder>/matrix/<SeriesInstanceUID>.zarr     convert
    <work>/<ds>/<folder>/svd-<svd key>.zarr                  dssvd, global mode
    <work>/<ds>/<folder>/local-<local key>.zarr              dssvd, local mode
    <denoised>/<SeriesInstanceUID>/rank-<r>/                 reconstruct, global mode
    <denoised>/<SeriesInstanceUID>/local-x<m>/               reconstruct, local mode
    <denoised>/<SeriesInstanceUID>/report.html, report.json  report (report.json last: complete)
    <denoised>/<SeriesInstanceUID>/deliveries/<output>/<destination>.json, deliveries.json   deliver

The keys name the parameters that produced a store (:meth:`ctdenoise.params.RunParams.svd_key`,
:meth:`ctdenoise.params.LocalParams.key`), so runs with other parameters never share one.
"""

from __future__ import annotations

from ctdenoise.params import multiplier_label
from ctdenoise.storage import join

MATRIX_DIR = "matrix"
REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
"""Written last by :func:`ctdenoise.report.write_report`: the completion marker of a series."""
DELIVERIES_DIR = "deliveries"
DELIVERIES_JSON = "deliveries.json"


def matrix_dir(folder_work_url: str) -> str:
    return join(folder_work_url, MATRIX_DIR)


def matrix_url(folder_work_url: str, series_uid: str) -> str:
    return join(folder_work_url, MATRIX_DIR, f"{series_uid}.zarr")


def svd_url(folder_work_url: str, svd_key: str) -> str:
    return join(folder_work_url, f"svd-{svd_key}.zarr")


def local_url(folder_work_url: str, local_key: str) -> str:
    return join(folder_work_url, f"local-{local_key}.zarr")


def series_url(denoised_url: str, series_uid: str) -> str:
    return join(denoised_url, series_uid)


def rank_output(series_url: str, rank: int) -> str:
    return join(series_url, f"rank-{int(rank)}")


def local_output(series_url: str, multiplier: float) -> str:
    return join(series_url, f"local-{multiplier_label(multiplier)}")


def report_json(series_url: str) -> str:
    return join(series_url, REPORT_JSON)


def report_html(series_url: str) -> str:
    return join(series_url, REPORT_HTML)


def deliveries_dir(series_url: str) -> str:
    return join(series_url, DELIVERIES_DIR)


def delivery_record(series_url: str, output: str, destination: str) -> str:
    """One output's record at one destination (:mod:`ctdenoise.report.deliveries`)."""
    return join(series_url, DELIVERIES_DIR, output, f"{destination}.json")


def deliveries_json(series_url: str) -> str:
    return join(series_url, DELIVERIES_JSON)


def report_vouching_for(output_url: str) -> str:
    """The ``report.json`` that vouches for an output (``<series>/rank-<r>/`` -> ``<series>/report.json``):
    withdrawn before the output changes."""
    return report_json(output_url.rstrip("/").rsplit("/", 1)[0])
