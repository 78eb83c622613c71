"""``ctdenoise reconstruct``: a denoised series as a derived DICOM series, in either mode.

- global mode: the rank-r series A V_r V_r^T from the SVD group (``s``, ``V``);
- local mode: the denoised matrix ``D`` of one threshold multiplier from the local low-rank
  group (``ctdenoise.local_lowrank``), already computed by the Spark job.

Both share everything else here (reading, metrics, DICOM writing, preview, publication); a
:class:`Denoised` source says where the denoised blocks come from and how the series is named.

Inputs are the series matrix A (voxels x slices, HU) and its SVD group (``s``, ``V``); see
docs/architecture.md. Projecting every voxel's slice profile onto the first ``r`` right
singular vectors keeps what the slices share (anatomy that changes smoothly along the series)
and drops what they do not (noise, which is independent from slice to slice).

The matrix is read one row block (Zarr chunk) at a time; only the denoised result is held, as
stored integers in slice-major order (16 bits per voxel, half the size of the float matrix), so
a 512x512x301 series needs ~160 MB instead of two float copies. Whole-volume numbers (Frobenius
norm, PSNR against a reference) are accumulated on the way.

Output at ``dest_url`` (staged locally, published atomically, ``_SUCCESS`` last)::

    dicom/IM0001.dcm ...   CT Image Storage, DERIVED\\SECONDARY\\AXIAL, one file per slice in
                           column order; same patient, study, frame of reference and geometry
                           as the source, new series; each instance references its source slice
    preview.png            middle slice: input | denoised | difference
    metrics.json           see :func:`reconstruct`

The series' ``report.json`` beside the output (:func:`ctdenoise.layout.report_vouching_for`)
is removed before the output is replaced: it vouches for the outputs as they were.

UIDs are derived from the source UIDs and the parameters that determine the pixels (rank and
the SVD's method, k, seed, oversampling, power iterations), and the files carry no clock
time, so a rerun writes byte-identical DICOM files.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ctdenoise import __version__, layout, matrix_store, storage
from ctdenoise.derived_series import DEFAULT_PREFIX
from ctdenoise.errors import InputError, ParameterError

if TYPE_CHECKING:
    import zarr

    from ctdenoise.dicom_out import PixelFormat
    from ctdenoise.geometry import SliceGeometry
    from ctdenoise.metrics import SquaredErrorSum

log = logging.getLogger(__name__)

AXIAL_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
MAX_SAMPLE_SLICES = 5  # slices compared with SSIM (plus the middle one)
REQUIRED_ATTRS = ("rows", "columns", "slices", "sop_instance_uids", "series_instance_uid")

# Type 2 attributes of the CT Image IOD (patient, study, series, equipment, acquisition): a
# derived object must carry them, empty if the source header did not have them.
TYPE2_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "PositionReferenceIndicator",
    "Manufacturer",
    "KVP",
    "AcquisitionNumber",
    "PatientPosition",
)


@dataclass(frozen=True)
class SourceSeries:
    """What the writer needs from the series matrix's attributes (validated)."""

    url: str
    rows: int
    columns: int
    slices: int
    sop_instance_uids: list[str]
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    attrs: Mapping[str, Any]

    @classmethod
    def from_matrix(cls, url: str, shape: Sequence[int], attrs: Mapping[str, Any]) -> "SourceSeries":
        missing = [key for key in REQUIRED_ATTRS if key not in attrs]
        if missing:
            raise InputError(f"{url}: series matrix attributes lack {', '.join(missing)} (see docs/architecture.md)")
        rows, columns, slices = int(attrs["rows"]), int(attrs["columns"]), int(attrs["slices"])
        if tuple(shape) != (rows * columns, slices):
            raise InputError(
                f"{url}: matrix shape {tuple(shape)} does not match rows*columns x slices = ({rows * columns}, {slices})"
            )
        uids = [str(u) for u in attrs["sop_instance_uids"]]
        if len(uids) != slices:
            raise InputError(f"{url}: {len(uids)} sop_instance_uids for {slices} slices")
        _check_uids(url, attrs, uids)
        from pydicom.uid import CTImageStorage

        return cls(
            url=url,
            rows=rows,
            columns=columns,
            slices=slices,
            sop_instance_uids=uids,
            series_instance_uid=str(attrs["series_instance_uid"]),
            study_instance_uid=str(attrs.get("study_instance_uid") or ""),
            frame_of_reference_uid=str(attrs.get("frame_of_reference_uid") or ""),
            sop_class_uid=str(attrs.get("sop_class_uid") or CTImageStorage),
            attrs=attrs,
        )


def _check_uids(url: str, attrs: Mapping[str, Any], sop_uids: Sequence[str]) -> None:
    """The source UIDs a derived series copies or derives from must be DICOM UIDs (convert
    refuses others; a matrix from elsewhere is checked again here)."""
    from ctdenoise.uids import shown, uid_problem

    given = [("series_instance_uid", attrs.get("series_instance_uid"))]
    given += [(key, attrs.get(key)) for key in ("study_instance_uid", "frame_of_reference_uid") if attrs.get(key)]
    given += [("sop_instance_uids", uid) for uid in sop_uids]
    for key, value in given:
        problem = uid_problem(str(value))
        if problem:
            raise InputError(f"{url}: {key} {shown(value)} is not a valid DICOM UID: {problem}")


def _validate_rank(rank: Any, k: int, svd_url: str) -> int:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise ParameterError(f"{svd_url}: rank must be an integer, got {rank!r}")
    if not 1 <= rank <= k:
        raise ParameterError(f"{svd_url}: rank {rank} is out of range: the SVD holds k={k} components (1..{k})")
    return int(rank)


def _sample_columns(n: int) -> list[int]:
    """Slices used for SSIM: up to MAX_SAMPLE_SLICES spread over the series, and the middle one."""
    picks = {int(round(x)) for x in np.linspace(0, n - 1, min(n, MAX_SAMPLE_SLICES))}
    picks.add(matrix_store.middle_column(n))
    return sorted(picks)


def _series_number(template: Any, denoised: "Denoised") -> int:
    """The source's SeriesNumber followed by the output's (3 -> 3020 for rank 20; local mode
    3905 for x0.5: :mod:`ctdenoise.derived_series`), within IS range."""
    from ctdenoise.derived_series import series_number

    try:
        base = int(template.get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        base = 0
    return series_number(base, denoised.series_offset())


def derived_series_uid(source_series_uid: str, rank: int, svd_attrs: Mapping[str, Any], k: int) -> str:
    """SeriesInstanceUID of the rank-r series: from the source series and what sets its pixels."""
    from ctdenoise.uids import derive_uid

    return derive_uid(
        "ctdenoise-svd-derived",
        source_series_uid,
        f"rank={rank}",
        f"k={k}",
        f"method={svd_attrs.get('method')}",
        f"seed={svd_attrs.get('seed')}",
        f"oversample={svd_attrs.get('oversample')}",
        f"power_iters={svd_attrs.get('power_iters')}",
    )


def _derived_template(source: SourceSeries, denoised: "Denoised", prefix: str):
    """The series-level header of the derived series, from the source's header template, labelled
    as a processing result (:mod:`ctdenoise.derived_series`)."""
    from pydicom.dataset import Dataset

    from ctdenoise.derived_series import contributing_equipment, series_description
    from ctdenoise.dicom_out import header_template

    header = source.attrs.get("header")
    template = header_template(header) if isinstance(header, Mapping) and header else Dataset()
    for keyword in TYPE2_KEYWORDS:
        if keyword not in template:
            setattr(template, keyword, None)
    if source.study_instance_uid:
        template.StudyInstanceUID = source.study_instance_uid
    elif "StudyInstanceUID" not in template:
        from ctdenoise.uids import derive_uid

        template.StudyInstanceUID = derive_uid("ctdenoise-study-of", source.series_instance_uid)
    if source.frame_of_reference_uid:
        template.FrameOfReferenceUID = source.frame_of_reference_uid
    elif "FrameOfReferenceUID" not in template:
        from ctdenoise.uids import derive_uid

        template.FrameOfReferenceUID = derive_uid("ctdenoise-frame-of-reference-of", source.series_instance_uid)
    template.Modality = "CT"
    template.SeriesInstanceUID = denoised.series_uid
    template.SeriesNumber = _series_number(template, denoised)
    what = f"{'SVD ' if denoised.mode == 'global' else ''}{denoised.label}"
    template.SeriesDescription = series_description(prefix, what, template.get("SeriesDescription"))
    template.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    template.DerivationDescription = denoised.derivation()[:1024]
    template.ContributingEquipmentSequence = [contributing_equipment(template.DerivationDescription)]
    if "WindowCenter" not in template or "WindowWidth" not in template:
        template.WindowCenter, template.WindowWidth = "40", "400"
    return template


def _geometry(source: SourceSeries, j: int) -> SliceGeometry:
    """Per-column geometry from the matrix attributes (the source's own values, in mm)."""
    from ctdenoise.geometry import SliceGeometry

    attrs = source.attrs
    positions = attrs.get("slice_positions") or []
    ipps = attrs.get("image_positions_patient") or []
    location = float(positions[j]) if j < len(positions) and positions[j] is not None else None
    ipp = ipps[j] if j < len(ipps) and ipps[j] is not None else None
    if ipp is None:
        ipp = (0.0, 0.0, location if location is not None else float(j))
    iop = attrs.get("image_orientation_patient") or AXIAL_ORIENTATION
    spacing = attrs.get("pixel_spacing") or (1.0, 1.0)
    thickness = attrs.get("slice_thickness")
    return SliceGeometry(
        image_position=tuple(float(v) for v in ipp),
        image_orientation=tuple(float(v) for v in iop),
        pixel_spacing=tuple(float(v) for v in spacing),
        slice_location=location,
        instance_number=j + 1,
        slice_thickness=None if thickness is None else float(thickness),
        rows=source.rows,
        columns=source.columns,
        file=f"{source.url} column {j}",
    )


def _instance_references(ds: Any, source: SourceSeries, j: int) -> None:
    """SourceImageSequence and ReferencedSeriesSequence: the source slice this one comes from."""
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    def reference() -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = source.sop_class_uid
        item.ReferencedSOPInstanceUID = source.sop_instance_uids[j]
        return item

    source_item = reference()
    purpose = Dataset()
    code = codes.DCM.SourceImageForImageProcessingOperation
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = code.value, code.scheme_designator, code.meaning
    source_item.PurposeOfReferenceCodeSequence = [purpose]
    source_item.SpatialLocationsPreserved = "YES"
    ds.SourceImageSequence = [source_item]
    series_item = Dataset()
    series_item.SeriesInstanceUID = source.series_instance_uid
    series_item.ReferencedInstanceSequence = [reference()]
    ds.ReferencedSeriesSequence = [series_item]


class Denoised:
    """Where the denoised blocks of one output come from, and what the output is called."""

    mode: str
    label: str  # "rank 20", "local x1"
    series_uid: str

    def block(self, start: int, stop: int, A_block: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def metrics(self, frobenius2: float, denoised2: float) -> dict[str, Any]:
        raise NotImplementedError

    def series_offset(self) -> int:
        """The output's own number, after the source's (:func:`ctdenoise.derived_series.series_number`)."""
        raise NotImplementedError

    def derivation(self) -> str:
        raise NotImplementedError


class GlobalRank(Denoised):
    """``A V_r V_r^T``: the rank-r truncation of the whole-series SVD."""

    mode = "global"

    def __init__(self, source: SourceSeries, svd_url: str, rank: Any, storage_options: Mapping[str, Any] | None):
        s, V, self.attrs = matrix_store.read_svd(svd_url, storage_options)
        self.s, self.k = s, int(s.shape[0])
        self.rank = _validate_rank(rank, self.k, svd_url)
        if V.shape != (source.slices, self.k):
            raise InputError(
                f"{svd_url}: V has shape {V.shape} but the matrix {source.url} has {source.slices} slices "
                f"and s has {self.k} values (expected V of shape ({source.slices}, {self.k}))"
            )
        self.Vr = np.asarray(V[:, : self.rank], dtype=np.float64)
        self.label = f"rank {self.rank}"
        self.series_uid = derived_series_uid(source.series_instance_uid, self.rank, self.attrs, self.k)

    def block(self, start: int, stop: int, A_block: np.ndarray) -> np.ndarray:
        return (A_block @ self.Vr) @ self.Vr.T

    def metrics(self, frobenius2: float, denoised2: float) -> dict[str, Any]:
        from ctdenoise.metrics import finite_or_none

        energy = float(np.sum(self.s[: self.rank] ** 2)) / frobenius2 if frobenius2 > 0 else math.nan
        return {"mode": "global", "rank": self.rank, "k": self.k, "retained_energy": finite_or_none(energy),
                "svd_method": self.attrs.get("method")}  # fmt: skip

    def series_offset(self) -> int:
        return self.rank

    def derivation(self) -> str:
        return (
            f"Truncated SVD across slices: A V_r V_r^T with rank {self.rank} of k={self.k} "
            f"({self.attrs.get('method', 'unknown')} SVD, seed {self.attrs.get('seed')}); ctdenoise {__version__}"
        )


def local_uid_keys() -> tuple[str, ...]:
    """The local group's attributes a derived series UID depends on besides its multiplier: the
    algorithm and every parameter that changes its pixels (all of :class:`LocalParams` but the
    list of multipliers), so outputs of other settings never share a UID."""
    from ctdenoise.params import LocalParams

    return ("algorithm", *(name for name in LocalParams.model_fields if name != "multipliers"))


class LocalMultiplier(Denoised):
    """The local low-rank estimate at one threshold multiplier (``D[i]`` of the local group)."""

    mode = "local"

    def __init__(self, source: SourceSeries, local_url: str, multiplier: Any, storage_options: Mapping[str, Any] | None):
        from ctdenoise.params import multiplier_label

        group, self.attrs = matrix_store.open_local(local_url, storage_options)
        multipliers = [float(x) for x in self.attrs.get("multipliers") or []]
        try:
            value = float(multiplier)
        except (TypeError, ValueError):
            raise ParameterError(f"{local_url}: multiplier must be a number, got {multiplier!r}") from None
        matches = [i for i, x in enumerate(multipliers) if math.isclose(x, value, rel_tol=1e-9)]
        if not matches:
            raise ParameterError(f"{local_url}: multiplier {value:g} was not computed (the group holds {multipliers})")
        self.index, self.multiplier = matches[0], value
        self.D = group["D"]
        expected = (len(multipliers), source.rows * source.columns, source.slices)
        if tuple(self.D.shape) != expected:
            raise InputError(f"{local_url}: D has shape {tuple(self.D.shape)}, expected {expected} for {source.url}")
        ranks = np.asarray(group["tile_ranks"][self.index], dtype=np.float64)
        self.mean_rank = float(ranks.mean()) if ranks.size else math.nan
        self.label = f"local {multiplier_label(value)}"
        from ctdenoise.uids import derive_uid

        self.series_uid = derive_uid(
            "ctdenoise-local-derived",
            source.series_instance_uid,
            f"multiplier={value:g}",
            *(f"{key}={self.attrs.get(key)}" for key in local_uid_keys()),
        )

    def block(self, start: int, stop: int, A_block: np.ndarray) -> np.ndarray:
        return np.asarray(self.D[self.index, start:stop, :], dtype=np.float64)

    def metrics(self, frobenius2: float, denoised2: float) -> dict[str, Any]:
        from ctdenoise.metrics import finite_or_none

        return {
            "mode": "local",
            "multiplier": self.multiplier,
            "mean_tile_rank": finite_or_none(self.mean_rank),
            "retained_energy": finite_or_none(denoised2 / frobenius2 if frobenius2 > 0 else math.nan),
            "tile": self.attrs.get("tile"),
            "stride": self.attrs.get("stride"),
            "shrinkage": self.attrs.get("shrinkage"),
        }

    def series_offset(self) -> int:
        from ctdenoise.derived_series import local_offset

        return local_offset(self.multiplier)

    def derivation(self) -> str:
        a = self.attrs
        return (
            f"Local low-rank: {a.get('tile')}x{a.get('tile')}-pixel tiles through all slices every {a.get('stride')} "
            f"pixels, {a.get('shrinkage')} shrinkage at {self.multiplier:g} x the optimal threshold, overlaps "
            f"averaged{'; non-local means per slice' if a.get('inplane') == 'nlm' else ''}; ctdenoise {__version__}"
        )


def reconstruct(
    matrix_url: str,
    svd_url: str,
    dest_url: str,
    rank: int | None = None,
    reference_url: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    *,
    multiplier: float | None = None,
    series_description_prefix: str = DEFAULT_PREFIX,
) -> dict[str, Any]:
    """Write one denoised series, its preview and metrics to ``dest_url``.

    ``series_description_prefix`` starts the derived SeriesDescription (the deployment's
    ``CT_DENOISE_SERIES_DESCRIPTION_PREFIX``; a label: the UIDs do not depend on it).

    Global mode: ``svd_url`` is the SVD group and ``rank`` the rank. Local mode: ``svd_url`` is
    the local low-rank group and ``multiplier`` the threshold multiplier (``rank`` is None).

    Returns the metrics (also written as ``metrics.json``):

    - ``mode``; global: ``rank``, ``k`` (components in the SVD), ``svd_method``; local:
      ``multiplier``, ``mean_tile_rank`` (components kept per tile, on average), ``tile``,
      ``stride``, ``shrinkage``; both: ``n_slices``, ``rows``, ``columns``;
    - ``retained_energy``: the denoised series' share of ||A||_F^2 (global: the first ``rank``
      squared singular values; local: ||D||_F^2), with ||A||_F from the matrix blocks;
    - ``noise_std_hu_input``, ``noise_std_hu_denoised``: noise estimate of the middle slice
      (:func:`ctdenoise.metrics.noise_std_hu`);
    - with ``reference_url`` (e.g. the ground truth or a full-dose series, same geometry):
      ``psnr_db_input``/``psnr_db_denoised`` over the whole volume and ``ssim_input``/
      ``ssim_denoised`` (mean over ``ssim_slices``), both in the -1000..1000 HU window
      (:mod:`ctdenoise.metrics`), so the gain is visible; otherwise these are absent;
    - ``series_instance_uid`` (output), ``source_series_instance_uid``, ``status``, ``dest``,
      ``seconds``.

    Raises :class:`ParameterError` for a rank outside 1..k or a multiplier not computed, and
    :class:`InputError` when the matrix, the decomposition and the reference do not fit together.
    """
    started = time.perf_counter()
    matrix = matrix_store.open_matrix(matrix_url, storage_options)
    source = SourceSeries.from_matrix(matrix_url, matrix.shape, dict(matrix.attrs))
    denoised = _denoised_source(source, svd_url, rank, multiplier, storage_options)
    reference = _open_reference(reference_url, matrix, matrix_url, storage_options)
    fmt = _pixel_format(source)
    volume = _denoise_blocks(matrix, matrix_url, denoised, fmt, reference)
    images = SampleImages.of(volume, source, fmt)
    metrics = _metrics(dest_url, source, denoised, volume, images, reference_url)
    template = _derived_template(source, denoised, series_description_prefix)
    _publish(dest_url, source, denoised, volume, fmt, images, metrics, started, storage_options, template)
    log.info("%s of %s -> %s (%.1f s)", denoised.label, source.series_instance_uid, dest_url, metrics["seconds"])
    return metrics


def _denoised_source(
    source: SourceSeries, url: str, rank: Any, multiplier: Any, storage_options: Mapping[str, Any] | None
) -> Denoised:
    """The mode follows from which of ``rank`` and ``multiplier`` is given: exactly one must be,
    since ``url`` is either an SVD group (global) or a local low-rank group (local)."""
    if (rank is None) == (multiplier is None):
        raise ParameterError(f"{url}: give a rank (global mode) or a multiplier (local mode), not {'both' if rank is not None else 'neither'}")
    if multiplier is None:
        return GlobalRank(source, url, rank, storage_options)
    return LocalMultiplier(source, url, multiplier, storage_options)


def _open_reference(
    reference_url: str | None, matrix: zarr.Array, matrix_url: str, storage_options: Mapping[str, Any] | None
) -> zarr.Array | None:
    """The reference matrix, or None; it is compared voxel for voxel, so its shape must match."""
    if not reference_url:
        return None
    reference = matrix_store.open_matrix(reference_url, storage_options)
    if reference.shape != matrix.shape:
        raise InputError(
            f"{reference_url}: reference matrix shape {reference.shape} differs from {matrix_url} {matrix.shape}"
        )
    return reference


def _pixel_format(source: SourceSeries) -> PixelFormat:
    """The source's stored-value format (made valid for CT), so stored values stay comparable."""
    from ctdenoise.dicom_out import PixelFormat

    attrs = source.attrs
    return PixelFormat.for_ct(
        attrs.get("rescale_slope"),
        attrs.get("rescale_intercept"),
        attrs.get("bits_allocated"),
        attrs.get("bits_stored"),
        attrs.get("pixel_representation"),
    )


@dataclass
class DenoisedVolume:
    """What one pass over the row blocks keeps (:func:`_denoise_blocks`).

    Only the denoised series is held whole, as stored integers; of the input and the reference
    only the sampled slices, and running sums for the whole-volume numbers, so that the float
    matrices are never held (module docstring).
    """

    stored: np.ndarray  # (slices, rows*columns) stored values, slice-major: each slice contiguous
    samples: list[int]  # columns compared with SSIM, the middle one among them
    input_samples: np.ndarray  # (len(samples), rows*columns) input HU, float32
    reference_samples: np.ndarray | None  # the same of the reference; None without one
    error_input: SquaredErrorSum  # input against the reference
    error_denoised: SquaredErrorSum  # denoised as written (stored values) against the reference
    frobenius2: float = 0.0  # ||A||_F^2, HU^2
    denoised2: float = 0.0  # ||denoised||_F^2 before rounding to stored values, HU^2


def _denoise_blocks(
    matrix: zarr.Array, matrix_url: str, denoised: Denoised, fmt: PixelFormat, reference: zarr.Array | None
) -> DenoisedVolume:
    """Denoise the matrix one row block (Zarr chunk) at a time, keeping a :class:`DenoisedVolume`.

    Blocks follow the chunks so each chunk is read once; each block is rounded to stored values
    and dropped before the next is read, so memory does not grow with float copies.
    """
    from ctdenoise.dicom_out import hu_to_stored, stored_to_hu
    from ctdenoise.metrics import SquaredErrorSum

    m, n = matrix.shape
    samples = _sample_columns(n)
    volume = DenoisedVolume(
        stored=np.empty((n, m), dtype=fmt.dtype),
        samples=samples,
        input_samples=np.empty((len(samples), m), dtype=np.float32),
        reference_samples=np.empty((len(samples), m), dtype=np.float32) if reference is not None else None,
        error_input=SquaredErrorSum(),
        error_denoised=SquaredErrorSum(),
    )
    step = int(matrix.chunks[0]) or m
    for start in range(0, m, step):
        stop = min(m, start + step)
        block = np.asarray(matrix[start:stop, :], dtype=np.float64)
        if not np.isfinite(block).all():
            raise InputError(f"{matrix_url}: non-finite values in rows {start}..{stop - 1}")
        volume.frobenius2 += float(np.sum(block * block))
        result = denoised.block(start, stop, block)
        volume.denoised2 += float(np.sum(result * result))
        block_stored = hu_to_stored(result, fmt)
        volume.stored[:, start:stop] = block_stored.T
        volume.input_samples[:, start:stop] = block[:, samples].T
        if reference is not None:
            ref_block = np.asarray(reference[start:stop, :], dtype=np.float64)
            volume.error_input.add(block, ref_block)
            volume.error_denoised.add(stored_to_hu(block_stored, fmt), ref_block)
            volume.reference_samples[:, start:stop] = ref_block[:, samples].T
        del block, block_stored, result
    return volume


@dataclass(frozen=True)
class SampleImages:
    """The sampled slices as images in HU, for SSIM, the noise estimate and the preview.

    The denoised images are read back from the stored values, so their numbers describe the
    files as written, rounding and clipping included.
    """

    input: np.ndarray  # (samples, rows, columns)
    denoised: np.ndarray  # (samples, rows, columns)
    reference: np.ndarray | None  # (samples, rows, columns); None without a reference
    middle: int  # index of the middle slice among the samples

    @classmethod
    def of(cls, volume: DenoisedVolume, source: SourceSeries, fmt: PixelFormat) -> SampleImages:
        from ctdenoise.dicom_out import stored_to_hu

        shape = (len(volume.samples), source.rows, source.columns)
        return cls(
            input=volume.input_samples.reshape(shape),
            denoised=stored_to_hu(volume.stored[volume.samples], fmt).reshape(shape),
            reference=None if volume.reference_samples is None else volume.reference_samples.reshape(shape),
            middle=volume.samples.index(matrix_store.middle_column(source.slices)),
        )


def _metrics(
    dest_url: str,
    source: SourceSeries,
    denoised: Denoised,
    volume: DenoisedVolume,
    images: SampleImages,
    reference_url: str | None,
) -> dict[str, Any]:
    """The metrics of :func:`reconstruct` but ``seconds``, which is measured once the files are
    written; reference numbers only with a reference, so their absence says none was given."""
    from ctdenoise.metrics import finite_or_none, noise_std_hu, ssim

    metrics: dict[str, Any] = {
        "status": "written",
        "dest": dest_url,
        **denoised.metrics(volume.frobenius2, volume.denoised2),
        "n_slices": source.slices,
        "rows": source.rows,
        "columns": source.columns,
        "noise_std_hu_input": finite_or_none(noise_std_hu(images.input[images.middle])),
        "noise_std_hu_denoised": finite_or_none(noise_std_hu(images.denoised[images.middle])),
        "series_instance_uid": str(denoised.series_uid),
        "source_series_instance_uid": source.series_instance_uid,
    }
    if images.reference is not None:
        metrics.update(
            {
                "reference": reference_url,
                "psnr_db_input": finite_or_none(volume.error_input.psnr_db),
                "psnr_db_denoised": finite_or_none(volume.error_denoised.psnr_db),
                "ssim_input": finite_or_none(ssim(images.input, images.reference)),
                "ssim_denoised": finite_or_none(ssim(images.denoised, images.reference)),
                "ssim_slices": volume.samples,
            }
        )
    return metrics


def _publish(
    dest_url: str,
    source: SourceSeries,
    denoised: Denoised,
    volume: DenoisedVolume,
    fmt: PixelFormat,
    images: SampleImages,
    metrics: dict[str, Any],
    started: float,
    storage_options: Mapping[str, Any] | None,
    template: Any,
) -> None:
    """Stage the DICOM series, the preview and ``metrics.json`` locally, then publish them at
    once (``_SUCCESS`` last), so a reader never sees a partial output.

    ``seconds`` is added to ``metrics`` when everything but ``metrics.json`` is written, so it
    covers the whole run.
    """
    with storage.staging_dir("ctdenoise-reconstruct-") as staged:
        staged = Path(staged)
        _write_dicom(staged / "dicom", template, source, denoised, volume.stored, fmt)
        _write_preview(staged / "preview.png", source, denoised, images)
        metrics["seconds"] = round(time.perf_counter() - started, 3)
        (staged / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        # The series' completion marker goes first: it never vouches for an output that changed.
        storage.remove(layout.report_vouching_for(dest_url), storage_options)
        storage.publish_dir(staged, dest_url, storage_options)


def _write_dicom(
    folder: Path, template: Any, source: SourceSeries, denoised: Denoised, stored: np.ndarray, fmt: PixelFormat
) -> None:
    """One CT instance per column, named in column order; UIDs derive from the output series and
    the source instance, so a rerun writes the same files."""
    from ctdenoise import dicom_out
    from ctdenoise.uids import derive_uid

    width = max(4, len(str(source.slices)))
    shape2d = (source.rows, source.columns)
    for j in range(source.slices):
        uid = derive_uid(denoised.series_uid, "instance", source.sop_instance_uids[j])
        ds = dicom_out.build_ct_dataset(template, stored[j].reshape(shape2d), _geometry(source, j), uid, fmt)
        _instance_references(ds, source, j)
        dicom_out.save(ds, folder / dicom_out.instance_file_name(j, width))


def _write_preview(path: Path, source: SourceSeries, denoised: Denoised, images: SampleImages) -> None:
    """The middle slice as input | denoised | difference, titled so a preview names its series
    and setting when seen alone."""
    from ctdenoise.preview import write_preview

    n = source.slices
    of_k = f" of {denoised.k}" if isinstance(denoised, GlobalRank) else ""
    write_preview(
        path,
        images.input[images.middle],
        images.denoised[images.middle],
        title=f"series ...{source.series_instance_uid[-12:]}  slice {matrix_store.middle_column(n) + 1}/{n}  {denoised.label}{of_k}",
        labels=("input", f"denoised ({denoised.label})", "input - denoised"),
        pixel_spacing=source.attrs.get("pixel_spacing"),
    )
