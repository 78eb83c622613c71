"""A simulated low-dose chest/upper-abdomen CT series, written as a valid CT DICOM series.

The anatomy is a stack of ellipses per slice (body with a subcutaneous fat ring, soft tissue,
lungs with vessels and a nodule, heart, liver, stomach, spine, ribs, sternum and a few
low-contrast lesions), defined in millimetres and as functions of the slice position ``z`` (mm):
lungs, heart, liver and lesions are ellipsoids (their sections grow and shrink along the
series), the body widens towards the chest and the ribs drift around the chest wall. The series
always covers the same 160 mm (``Z_EXTENT_MM``); ``--slices`` sets how finely, so the anatomy
does not depend on the number of slices. No two structures overlap (a test checks it), so every
voxel has one tissue value.

Acquisition, per slice (parallel-beam geometry over 180 degrees):

1. line integrals of the linear attenuation ``mu = MU_WATER * (1 + HU/1000)`` (1/cm) are
   computed *analytically* for the ellipses, averaged over each detector bin (one pixel wide).
   This is exact, about thirty times faster than ``skimage.transform.radon`` on the
   rasterised image (0.06 s instead of 1.8 s per 512x512 slice with 360 views), and avoids the "inverse
   crime" of projecting the same pixel grid that is reconstructed. Its conventions are those of
   ``skimage.transform.radon`` (a test compares both);
2. transmitted counts ``Poisson(photons * exp(-line integral))``, clamped to >= 1 (a detector
   reads at least one count; this bounds the log), then ``-log(counts / photons)``;
3. filtered back projection with ``skimage.transform.iradon`` (ramp filter), back to HU.

This gives the streaky, correlated noise of low-dose FBP: rays through the spine and the long
lateral paths see few photons. Measured soft-tissue noise (std of the slice minus the truth):
about 140 HU at 512x512 and 2e4 photons/ray, 60 HU at 1e5, 85 HU at 256x256 and 2e4, 45 HU at
64x64 and 2e4 (larger pixels average more rays). FBP dominates the cost: about 1.3 s of CPU per
512x512 slice (360 views), so 512x512x64 takes ~50 s on two free cores. The noise comes from a per-slice random stream derived from
``seed`` (``SeedSequence(seed, spawn_key=(slice,))``), so the result does not depend on how the
slices are spread over processes.

The ground truth (``--truth``) is the *noise-free phantom* itself (each pixel the area-weighted
mean of the tissues it covers, 4x4 sub-samples), not a noise-free reconstruction: it answers
"how close to the object is the denoised image", which is what PSNR/SSIM should measure. Note
that even a noise-free FBP differs from it slightly at edges (finite views, ramp filter).

Slices are stored as 12-bit unsigned values with RescaleIntercept -1024 (a common CT format):
noise below -1024 HU in air is clipped, as scanners do. Everything is deterministic: the same
parameters give byte-identical files (UIDs derived from the seed and the parameters, fixed
dates); the truth series does not depend on the dose, so all doses of one seed share it.

``body_scale`` sizes the patient: every structure's position and size in the slice plane is
multiplied by it, and the field of view with it (``FOV_MM * body_scale``), except the
low-contrast lesions and the lung nodule, which keep their size (they move with their organ):
at 1.33 the body is about 43 cm across, its centre photon-starved at low dose (long paths
through soft tissue leave a few counts per ray: streaks through the centre), and the lesions
stay small. The default 1 is the phantom as it always was (same bytes for the same arguments).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import current_process, get_context
from pathlib import Path
from typing import Any

import numpy as np

from ctdenoise import __version__, storage
from ctdenoise.errors import ParameterError

log = logging.getLogger(__name__)

MU_WATER = 0.19  # 1/cm, water at an effective energy of about 70 keV
FOV_MM = 350.0  # reconstruction diameter: pixel spacing = FOV_MM / size
Z_EXTENT_MM = 160.0  # the series covers z in [-80, 80] mm whatever the number of slices
Z_MIN_MM = -Z_EXTENT_MM / 2
MAX_VIEWS = 360
TRUTH_SUBSAMPLES = 4  # per pixel and axis, for partial-volume edges of the ground truth

STUDY_DATE = "20240101"
STUDY_TIME = "120000"

# Tissue values (HU) that the phantom is made of.
AIR, FAT, SOFT, LUNG = -1000.0, -100.0, 40.0, -850.0
HEART, LIVER, STOMACH = 50.0, 60.0, 10.0
RIB, STERNUM, CORTEX, CANCELLOUS, ARCH = 800.0, 600.0, 1000.0, 700.0, 700.0
NODULE = 30.0


@dataclass(frozen=True)
class Ellipse:
    """One elliptic structure of a slice, adding ``delta_hu`` to whatever contains it.

    Centre (``cx``, ``cy``) and semi-axes (``a`` along the direction at angle ``phi`` from the
    +x axis, ``b`` across) in mm. x points to the patient's left (image columns), y to the
    posterior (image rows), as ImageOrientationPatient [1,0,0,0,1,0] says.
    """

    cx: float
    cy: float
    a: float
    b: float
    phi: float
    delta_hu: float


def _section(cx: float, cy: float, cz: float, a: float, b: float, c: float, z: float, delta: float, phi: float = 0.0) -> Ellipse | None:
    """The section at ``z`` of an ellipsoid (semi-axis ``c`` along z), or None if it misses."""
    h = (z - cz) / c
    if abs(h) >= 1.0:
        return None
    scale = math.sqrt(1.0 - h * h)
    return Ellipse(cx, cy, a * scale, b * scale, phi, delta)


# Lungs: (centre x, centre z, semi-axis z); both 40 x 66 mm across at their widest, centred y=0.
_LUNGS = {"right": (-72.0, 70.0, 110.0), "left": (72.0, 65.0, 115.0)}
# Lung vessels: positions as fractions of the lung's semi-axes (right lung; mirrored on the left).
_VESSELS = ((0.45, 0.3), (0.15, -0.55), (-0.4, 0.1), (0.1, 0.6), (-0.3, -0.5), (0.55, -0.15))
# Low-contrast lesions: spheres (x, y, z, radius mm, HU above their surroundings).
_LESIONS = (
    (-50.0, -5.0, -68.0, 10.0, 20.0),  # liver
    (-70.0, 20.0, -58.0, 7.0, 12.0),  # liver
    (-35.0, 72.0, 0.0, 8.0, 15.0),  # paravertebral muscle
    (0.0, -25.0, 30.0, 6.0, 15.0),  # heart
)
_NODULE = (75.0, 35.0, 35.0, 4.0)  # solid lung nodule (x, y, z, radius), left lung


def anatomy(z: float, body_scale: float = 1.0) -> list[Ellipse]:
    """The structures of the slice at ``z`` mm (z grows towards the head: -80 liver, +80 apex),
    in a patient ``body_scale`` times the default size (lesions and nodule keep their size)."""
    s = (z - Z_MIN_MM) / Z_EXTENT_MM  # 0 at the bottom of the series, 1 at the top
    outer_a, outer_b = 150.0 + 12.0 * s, 105.0 + 8.0 * s
    inner_a, inner_b = outer_a - 12.0, outer_b - 12.0
    shapes = [
        Ellipse(0.0, 0.0, outer_a, outer_b, 0.0, FAT - AIR),
        Ellipse(0.0, 0.0, inner_a, inner_b, 0.0, SOFT - FAT),
    ]
    for side, (cx, cz, c) in _LUNGS.items():
        lung = _section(cx, 0.0, cz, 40.0, 66.0, c, z, LUNG - SOFT)
        if lung is None:
            continue
        shapes.append(lung)
        scale = lung.a / 40.0
        if scale < 0.5:
            continue
        sign = -1.0 if side == "right" else 1.0
        turn = 0.4 * math.sin(z / 30.0)  # the vessel tree turns as the slice moves
        for fx, fy in _VESSELS:
            rx = fx * math.cos(turn) - fy * math.sin(turn)
            ry = fx * math.sin(turn) + fy * math.cos(turn)
            radius = 2.5 * (0.5 + 0.5 * scale)
            shapes.append(Ellipse(cx + sign * rx * lung.a, ry * lung.b, radius, radius, 0.0, SOFT - LUNG))
    heart = _section(4.0, -22.0, 25.0, 26.0, 24.0, 50.0, z, HEART - SOFT, phi=math.radians(30))
    if heart is not None:
        shapes.append(heart)
    for section in (
        _section(-50.0, 0.0, -80.0, 65.0, 50.0, 40.0, z, LIVER - SOFT),
        _section(50.0, -35.0, -85.0, 28.0, 22.0, 38.0, z, STOMACH - SOFT),
    ):
        if section is not None:
            shapes.append(section)
    # Spine: vertebral body (cortex and cancellous core), arch and spinal canal; constant in z.
    shapes += [
        Ellipse(0.0, 55.0, 18.0, 15.0, 0.0, CORTEX - SOFT),
        Ellipse(0.0, 55.0, 15.0, 12.0, 0.0, CANCELLOUS - CORTEX),
        Ellipse(0.0, 80.0, 20.0, 9.0, 0.0, ARCH - SOFT),
        Ellipse(0.0, 79.0, 7.0, 6.0, 0.0, SOFT - ARCH),
    ]
    # Ribs: five per side on an ellipse inside the chest wall, drifting as z changes.
    ring_a, ring_b = 0.9 * inner_a, 0.9 * inner_b
    for k, base in enumerate((-60.0, -30.0, 0.0, 30.0, 60.0)):
        alpha = math.radians(base + 8.0 * math.sin(z / 25.0 + 0.7 * k))
        for sign in (-1.0, 1.0):
            x, y = sign * ring_a * math.cos(alpha), ring_b * math.sin(alpha)
            tangent = math.atan2(ring_b * math.cos(alpha), -sign * ring_a * math.sin(alpha))
            shapes.append(Ellipse(x, y, 6.0, 4.0, tangent, RIB - SOFT))
    if z > -20.0:
        shapes.append(Ellipse(0.0, -0.9 * inner_b, 14.0, 6.0, 0.0, STERNUM - SOFT))
    if body_scale != 1.0:
        k = body_scale
        shapes = [Ellipse(e.cx * k, e.cy * k, e.a * k, e.b * k, e.phi, e.delta_hu) for e in shapes]
    for x, y, cz, r, delta in _LESIONS:
        lesion = _section(x * body_scale, y * body_scale, cz, r, r, r, z, delta)
        if lesion is not None:
            shapes.append(lesion)
    x, y, cz, r = _NODULE
    nodule = _section(x * body_scale, y * body_scale, cz, r, r, r, z, NODULE - LUNG)
    if nodule is not None:
        shapes.append(nodule)
    return shapes


def slice_positions(slices: int) -> np.ndarray:
    """z (mm) of each slice centre: ``slices`` equal slabs covering Z_EXTENT_MM, ascending."""
    spacing = Z_EXTENT_MM / slices
    return Z_MIN_MM + spacing * (np.arange(slices) + 0.5)


def n_views(size: int) -> int:
    """Projection angles over 180 degrees: one per detector bin, at most MAX_VIEWS.

    Full angular sampling of a 512 image would need ~800 views; 360 keep view-aliasing streaks
    at the edge of the field small while keeping FBP at ~1 s per 512x512 slice.
    """
    return int(min(MAX_VIEWS, max(90, size)))


def pixel_spacing_mm(size: int, body_scale: float = 1.0) -> float:
    """Pixel spacing (mm) of a ``size`` x ``size`` slice: the field of view grows with the body."""
    return FOV_MM * body_scale / size


def rasterize(shapes: list[Ellipse], size: int, subsamples: int = TRUTH_SUBSAMPLES, body_scale: float = 1.0) -> np.ndarray:
    """The noise-free slice in HU (float32): area-weighted tissue values per pixel.

    Pixel (r, c) is centred at x = (c - size//2) * spacing, y = (r - size//2) * spacing, the
    rotation centre of skimage's radon/iradon; the spacing is :func:`pixel_spacing_mm`.
    """
    ps = pixel_spacing_mm(size, body_scale)
    centre = size // 2
    image = np.full((size, size), AIR, dtype=np.float64)
    offsets = ((np.arange(subsamples) + 0.5) / subsamples - 0.5) * ps
    for e in shapes:
        reach = max(e.a, e.b)
        c0 = max(0, int(math.floor((e.cx - reach) / ps)) + centre - 1)
        c1 = min(size, int(math.ceil((e.cx + reach) / ps)) + centre + 2)
        r0 = max(0, int(math.floor((e.cy - reach) / ps)) + centre - 1)
        r1 = min(size, int(math.ceil((e.cy + reach) / ps)) + centre + 2)
        if c0 >= c1 or r0 >= r1:
            continue
        xs = ((np.arange(c0, c1) - centre) * ps)[None, :, None] + offsets[None, None, :]
        ys = ((np.arange(r0, r1) - centre) * ps)[:, None, None] + offsets[None, None, :]
        # all sub-sample pairs: (rows, cols, sy, sx)
        dx = xs[:, :, None, :] - e.cx
        dy = ys[:, :, :, None] - e.cy
        cos, sin = math.cos(e.phi), math.sin(e.phi)
        u = (dx * cos + dy * sin) / e.a
        v = (-dx * sin + dy * cos) / e.b
        coverage = ((u * u + v * v) <= 1.0).mean(axis=(2, 3))
        image[r0:r1, c0:c1] += e.delta_hu * coverage
    return image.astype(np.float32)


def project(shapes: list[Ellipse], size: int, theta_deg: np.ndarray, body_scale: float = 1.0) -> np.ndarray:
    """Line integrals of mu (dimensionless, sum of mu[1/cm] * length[cm]) per detector bin.

    Shape ``(size, len(theta))`` like ``skimage.transform.radon(..., circle=True)``: detector bin
    i is at t = i - size//2 pixels, t = x cos(theta) - y sin(theta) in pixel units. Each value
    is the exact chord integral averaged over the bin's width (one pixel of
    :func:`pixel_spacing_mm`).
    """
    ps = pixel_spacing_mm(size, body_scale)
    theta = np.deg2rad(np.asarray(theta_deg, dtype=np.float64))[None, :]
    views = np.arange(theta.shape[1])[None, :]
    sino = np.zeros((size, theta.shape[1]), dtype=np.float64)
    for e in shapes:
        a, b = e.a / ps, e.b / ps  # pixels
        s2 = (a * np.cos(theta + e.phi)) ** 2 + (b * np.sin(theta + e.phi)) ** 2
        s = np.sqrt(s2)
        t0 = (e.cx * np.cos(theta) - e.cy * np.sin(theta)) / ps
        # Only the band of bins the ellipse's shadow can reach, per view: small structures
        # (ribs, vessels) touch a few bins, not the whole detector.
        width = 2 * int(math.ceil(max(a, b))) + 4
        first = np.floor(t0 - max(a, b)).astype(np.int64) - 1 + size // 2
        bins = first + np.arange(width)[:, None]  # (width, views) detector indices
        valid = (bins >= 0) & (bins < size)
        t = (bins - size // 2).astype(np.float64)
        lo = np.clip(t - 0.5 - t0, -s, s)
        hi = np.clip(t + 0.5 - t0, -s, s)

        def primitive(tau: np.ndarray) -> np.ndarray:  # integral of sqrt(s^2 - tau^2)
            return 0.5 * (tau * np.sqrt(np.maximum(s2 - tau * tau, 0.0)) + s2 * np.arcsin(np.clip(tau / s, -1.0, 1.0)))

        chord = 2.0 * a * b / s2 * (primitive(hi) - primitive(lo))  # mean chord over the bin, px
        mu_per_pixel = MU_WATER * (e.delta_hu / 1000.0) * (ps / 10.0)  # 1/cm * cm per pixel
        # bins are distinct within a view, so this fancy-indexed += adds each value once
        sino[bins[valid], np.broadcast_to(views, bins.shape)[valid]] += chord[valid] * mu_per_pixel
    return sino


def simulate_slice(
    z: float, size: int, photons: float, seed: int, index: int, truth: bool = False, views: int | None = None,
    body_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The low-dose FBP slice at ``z`` in HU (float32), and the noise-free phantom if asked.

    ``views`` projection angles over 180 degrees (default :func:`n_views`); ``index`` selects
    the slice's random stream. ``photons=math.inf`` gives the noise-free FBP (the full-dose
    reference of the quality benchmark: same views and filter, no Poisson noise).
    ``body_scale``: the patient's size (module docstring).
    """
    from skimage.transform import iradon

    shapes = anatomy(z, body_scale)
    theta = np.linspace(0.0, 180.0, views or n_views(size), endpoint=False)
    line_integrals = project(shapes, size, theta, body_scale)
    if math.isinf(photons):  # the full-dose reference: FBP of noise-free projections
        noisy = line_integrals
    else:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
        counts = rng.poisson(photons * np.exp(-line_integrals))
        noisy = -np.log(np.maximum(counts, 1) / photons)
    mu_cm = iradon(noisy, theta=theta, circle=True, filter_name="ramp") / (pixel_spacing_mm(size, body_scale) / 10.0)
    hu = (1000.0 * (mu_cm / MU_WATER - 1.0)).astype(np.float32)
    return hu, (rasterize(shapes, size, body_scale=body_scale) if truth else None)


def _simulate_packed(args: tuple[float, int, float, int, int, bool, int | None, float]) -> tuple[np.ndarray, np.ndarray | None]:
    return simulate_slice(*args)


def simulate_volume(
    size: int,
    slices: int,
    photons: float,
    seed: int,
    truth: bool = False,
    workers: int | None = None,
    views: int | None = None,
    body_scale: float = 1.0,
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """``(index, low-dose HU, truth HU or None)`` per slice, in slice order.

    Slices are independent, so they are spread over a process pool when the work is worth
    the start-up of the workers (about a second each); the random stream of each slice
    depends only on ``seed`` and the slice index, never on the worker.
    """
    jobs = [(float(z), size, float(photons), seed, i, truth, views, float(body_scale)) for i, z in enumerate(slice_positions(slices))]
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(workers, slices)
    # A daemonic process (e.g. some task runners) may not start children: run serially there.
    if workers > 1 and size >= 128 and slices >= 4 and not current_process().daemon:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            for i, (hu, true_hu) in enumerate(pool.map(_simulate_packed, jobs, chunksize=1)):
                yield i, hu, true_hu
    else:
        for i, job in enumerate(jobs):
            hu, true_hu = _simulate_packed(job)
            yield i, hu, true_hu


BODY_SCALE_LIMITS = (0.5, 2.0)


def _validate(size: int, slices: int, photons: float, seed: int, views: int, body_scale: float = 1.0) -> None:
    if not 32 <= size <= 2048:
        raise ParameterError(f"phantom --size must be between 32 and 2048 pixels, got {size}")
    if not 1 <= slices <= 2000:
        raise ParameterError(f"phantom --slices must be between 1 and 2000, got {slices}")
    if not (math.isfinite(photons) and 1 <= photons <= 1e15):
        raise ParameterError(f"phantom --photons must be between 1 and 1e15 (photons per ray), got {photons}")
    if seed < 0:
        raise ParameterError(f"phantom --seed must be >= 0, got {seed}")
    if not 8 <= views <= 4096:
        raise ParameterError(f"phantom views must be between 8 and 4096 angles, got {views}")
    if not BODY_SCALE_LIMITS[0] <= body_scale <= BODY_SCALE_LIMITS[1]:
        low, high = BODY_SCALE_LIMITS
        raise ParameterError(f"phantom --body-scale must be between {low:g} and {high:g}, got {body_scale}")


@dataclass(frozen=True)
class PhantomUIDs:
    """UIDs of one phantom run; the study and frame of reference are shared with the truth."""

    study: str
    frame_of_reference: str
    series: str
    truth_series: str

    @classmethod
    def derive(cls, size: int, slices: int, photons: float, seed: int, views: int, body_scale: float = 1.0) -> "PhantomUIDs":
        from ctdenoise.uids import derive_uid

        # The study is the simulated "patient": it depends on the anatomy and its sampling, not
        # on the dose, so series of several doses (and the truth) of one seed share the study.
        # The default body adds nothing to the key: its UIDs are those it always had.
        body = () if body_scale == 1.0 else (f"body_scale={body_scale!r}",)
        anatomy_key = ("ctdenoise-phantom", f"seed={seed}", f"size={size}", f"slices={slices}", *body)
        return cls(
            study=derive_uid(*anatomy_key, "study"),
            frame_of_reference=derive_uid(*anatomy_key, "frame-of-reference"),
            series=derive_uid(*anatomy_key, f"photons={photons!r}", f"views={views}", "low-dose"),
            truth_series=derive_uid(*anatomy_key, "truth"),
        )


def _template(uids: PhantomUIDs, seed: int, series_uid: str, number: int, description: str, comments: str, fov_mm: float = FOV_MM):
    """The patient/study/series/equipment attributes shared by every slice of one series."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "PHANTOM^LOWDOSE"
    ds.PatientID = f"CTDENOISE-PHANTOM-{seed}"[:64]
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = uids.study
    ds.StudyDate = STUDY_DATE
    ds.StudyTime = STUDY_TIME
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"PH{seed}"[:16]
    ds.AccessionNumber = ""
    ds.StudyDescription = "ctdenoise simulated chest CT"
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDate = STUDY_DATE
    ds.SeriesTime = STUDY_TIME
    ds.SeriesDescription = description
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "ctdenoise"
    ds.ManufacturerModelName = "phantom"
    ds.SoftwareVersions = __version__
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    ds.ContentDate = STUDY_DATE
    ds.ContentTime = STUDY_TIME
    ds.AcquisitionDate = STUDY_DATE
    ds.AcquisitionTime = STUDY_TIME
    ds.KVP = "120"
    ds.ConvolutionKernel = "RAMP"
    ds.ReconstructionDiameter = f"{fov_mm:g}"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.ImageComments = comments[:10240]
    ds.BurnedInAnnotation = "NO"
    return ds


class _SeriesWriter:
    """Writes the slices of one series into a staging folder as IM0001.dcm, IM0002.dcm..."""

    def __init__(self, folder: Path, template: Any, size: int, slices: int, series_uid: str, body_scale: float = 1.0):
        from ctdenoise.dicom_out import PixelFormat

        self.folder = folder
        self.template = template
        self.size = size
        self.series_uid = series_uid
        self.body_scale = body_scale
        self.positions = slice_positions(slices)
        self.thickness = Z_EXTENT_MM / slices
        self.fmt = PixelFormat(rescale_slope=1.0, rescale_intercept=-1024.0, bits_allocated=16, bits_stored=12, pixel_representation=0)
        self.width = max(4, len(str(slices)))

    def write(self, index: int, hu: np.ndarray) -> None:
        from ctdenoise import dicom_out
        from ctdenoise.geometry import SliceGeometry
        from ctdenoise.uids import derive_uid

        ps = pixel_spacing_mm(self.size, self.body_scale)
        corner = -(self.size // 2) * ps  # centre of pixel (0, 0): the isocentre is pixel size//2
        z = float(self.positions[index])
        geometry = SliceGeometry(
            image_position=(corner, corner, z),
            image_orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
            pixel_spacing=(ps, ps),
            slice_location=z,
            instance_number=index + 1,
            slice_thickness=self.thickness,
            rows=self.size,
            columns=self.size,
        )
        uid = derive_uid(self.series_uid, "instance", index)
        ds = dicom_out.build_ct_dataset(self.template, dicom_out.hu_to_stored(hu, self.fmt), geometry, uid, self.fmt)
        dicom_out.save(ds, self.folder / dicom_out.instance_file_name(index, self.width))


def write_phantom_series(
    out: str,
    size: int = 512,
    slices: int = 64,
    photons: float = 2e4,
    seed: int = 0,
    truth: str | None = None,
    workers: int | None = None,
    views: int | None = None,
    storage_options: dict[str, Any] | None = None,
    body_scale: float = 1.0,
) -> dict[str, Any]:
    """Simulate the low-dose series and write it to ``out`` (folder or fsspec URL).

    With ``truth``, the noise-free phantom is written there as a second series of the same
    study and frame of reference. Both are staged locally and published atomically
    (``_SUCCESS`` last). Returns a summary record for the CLI (one JSON line).

    ``views`` (default :func:`n_views`) trades time for view-aliasing streaks: FBP time grows
    linearly with it (about 1 s per 512x512 slice at 360 views). ``workers`` caps the process
    pool (default: all cores). ``body_scale`` sizes the patient (module docstring).
    """
    views = n_views(size) if views is None else views
    _validate(size, slices, photons, seed, views, body_scale)
    started = time.perf_counter()
    uids = PhantomUIDs.derive(size, slices, photons, seed, views, body_scale)
    fov = FOV_MM * body_scale
    # The truth does not depend on the dose: its files must not either (same bytes for all doses).
    body = "" if body_scale == 1.0 else f" body_scale={body_scale:g}"
    anatomy_settings = f"seed={seed} size={size} slices={slices} fov={fov:g}mm{body}"
    settings = f"photons/ray={photons:g} views={views} {anatomy_settings}"
    low_template = _template(
        uids, seed, uids.series, 2, f"ctdenoise phantom low dose {photons:g} photons", f"Simulated low-dose FBP; {settings}", fov
    )
    truth_template = _template(
        uids, seed, uids.truth_series, 1, "ctdenoise phantom ground truth", f"Noise-free phantom (ground truth); {anatomy_settings}", fov
    )
    truth_template.ConvolutionKernel = "NONE"

    with storage.staging_dir("ctdenoise-phantom-") as staged:
        low_dir, truth_dir = Path(staged) / "low", Path(staged) / "truth"
        low_dir.mkdir()
        low = _SeriesWriter(low_dir, low_template, size, slices, uids.series, body_scale)
        true = None
        if truth:
            truth_dir.mkdir()
            true = _SeriesWriter(truth_dir, truth_template, size, slices, uids.truth_series, body_scale)
        for index, hu, true_hu in simulate_volume(
            size, slices, photons, seed, truth=bool(truth), workers=workers, views=views, body_scale=body_scale
        ):
            low.write(index, hu)
            if true is not None and true_hu is not None:
                true.write(index, true_hu)
        storage.publish_dir(low_dir, out, storage_options)
        if truth:
            storage.publish_dir(truth_dir, truth, storage_options)

    record: dict[str, Any] = {
        "status": "written",
        "out": out,
        "series_instance_uid": str(uids.series),
        "study_instance_uid": str(uids.study),
        "frame_of_reference_uid": str(uids.frame_of_reference),
        "size": size,
        "slices": slices,
        "photons": photons,
        "seed": seed,
        "views": views,
        "body_scale": body_scale,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if truth:
        record["truth"] = truth
        record["truth_series_instance_uid"] = str(uids.truth_series)
    log.info("phantom %s: %d slices of %dx%d at %g photons/ray in %.1f s", out, slices, size, size, photons, record["seconds"])
    return record
