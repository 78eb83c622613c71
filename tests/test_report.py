"""The per-series report: JSON summary, self-contained HTML, and rendering in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ctdenoise import matrix_store, report
from ctdenoise.errors import InputError, ParameterError
from ctdenoise.params import RunParams
from ctdenoise.records import Output, Series
from ctdenoise.report import ReportEntry, RunInfo

ROWS = COLUMNS = 64
SLICES = 12
SERIES_UID = "1.2.826.0.1.3680043.8.498.1001"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1000"


def _phantom(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) matrices (voxels, slices) in HU: a body ellipse, lungs, a bone, slow drift."""
    yy, xx = np.mgrid[-1:1:ROWS * 1j, -1:1:COLUMNS * 1j]
    clean = np.empty((ROWS * COLUMNS, SLICES), dtype=np.float64)
    for j in range(SLICES):
        t = j / (SLICES - 1)
        img = np.full((ROWS, COLUMNS), -1000.0)
        img[(xx / 0.9) ** 2 + (yy / 0.7) ** 2 <= 1] = 40.0
        for cx in (-0.4, 0.4):
            img[((xx - cx) / (0.25 + 0.05 * t)) ** 2 + (yy / 0.45) ** 2 <= 1] = -800.0
        img[(xx**2 + (yy + 0.5) ** 2) <= (0.1 + 0.03 * t) ** 2] = 700.0
        clean[:, j] = img.ravel()
    rng = np.random.default_rng(seed)
    return clean + rng.normal(0.0, 30.0, clean.shape), clean


def _matrix_attrs(uid: str = SERIES_UID, description: str = "Thorax <low dose> & \"test\"") -> dict[str, Any]:
    return {
        "rows": ROWS,
        "columns": COLUMNS,
        "slices": SLICES,
        "series_instance_uid": uid,
        "study_instance_uid": STUDY_UID,
        "sop_instance_uids": [f"{uid}.{j + 1}" for j in range(SLICES)],
        "slice_positions": [2.5 * j for j in range(SLICES)],
        "pixel_spacing": [0.7, 0.7],
        "slice_spacing": 2.5,
        "ordering": "normal",
        "header": {"0008103E": {"vr": "LO", "Value": [description]}},
    }


def _metrics(noisy: np.ndarray, clean: np.ndarray, s: np.ndarray, V: np.ndarray, r: int, frob: float) -> dict:
    """metrics.json content as the writer computes it (its keys; the shared metric helpers)."""
    from ctdenoise.metrics import noise_std_hu, psnr_db, ssim

    recon = noisy @ V[:, :r] @ V[:, :r].T
    mid = SLICES // 2
    as_slices = lambda a: a.T.reshape(SLICES, ROWS, COLUMNS)  # noqa: E731
    return {
        "status": "written",
        "rank": r,
        "k": int(s.size),
        "retained_energy": float(np.sum(s[:r] ** 2) / frob**2),
        "noise_std_hu_input": noise_std_hu(as_slices(noisy)[mid]),
        "noise_std_hu_denoised": noise_std_hu(as_slices(recon)[mid]),
        "psnr_db_input": psnr_db(noisy, clean),
        "psnr_db_denoised": psnr_db(recon, clean),
        "ssim_input": ssim(as_slices(noisy)[mid], as_slices(clean)[mid]),
        "ssim_denoised": ssim(as_slices(recon)[mid], as_slices(clean)[mid]),
        "seconds": 0.1 * r,
        "source_series_instance_uid": SERIES_UID,
    }


def make_series(root: Path, conf: dict[str, Any]) -> Series:
    return Series(folder="scan", ds="2025-01-02", source_url="s3://scans/patient-1/", files=SLICES, series_instance_uid=SERIES_UID,
                  work_url=str(root / "work" / "scan"), denoised_url=str(root / "denoised"), params=RunParams.from_conf(conf))  # fmt: skip


@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, Any]:
    from ctdenoise.ranks import select_ranks

    noisy, clean = _phantom()
    series = make_series(tmp_path, {"modes": ["global"], "ranks": [2, 6], "drop_percents": [10, 50]})
    matrix_store.write_matrix(noisy, _matrix_attrs(), series.matrix_url)
    reference_url = str(tmp_path / "truth" / f"{SERIES_UID}.zarr")
    matrix_store.write_matrix(clean, _matrix_attrs("1.2.826.0.1.3680043.8.498.2001"), reference_url)
    _, s, Vt = np.linalg.svd(noisy, full_matrices=False)
    V = Vt.T
    frob = float(np.linalg.norm(noisy))
    matrix_store.write_svd(
        series.svd_url,
        s,
        V,
        {
            "rank": int(s.size),
            "method": "exact",
            "method_reason": "n = 12 slices <= exact limit",
            "matrix_shape": list(noisy.shape),
            "frobenius_norm": frob,
            "timings": {"gram": 0.01, "eigh": 0.002},
            "error_estimate": 0.0,
            "seed": 0,
        },
    )
    # The rank rules as the plan gets them: explicit 2 and 6, drop 10 % and 50 %, Gavish-Donoho.
    choices = select_ranks(s, noisy.shape, ranks=[2, 6], drop_percents=[10, 50], frobenius_norm=frob)
    auto = next(c for c in choices if c.is_auto)
    assert auto.rank not in (2, 6, 11), "the phantom's GD rank should differ from the other rules' ranks"
    entries = []
    for c in choices:
        ok = c.rank != 6  # rank 6 (explicit + drop 50 %) failed in the writer
        output = Output(series=series, mode="global", rank=c.rank, choice=c)
        entries.append(ReportEntry(output, _metrics(noisy, clean, s, V, c.rank, frob) if ok else None))
    run = RunInfo(dag_id="ct_denoise", run_id="manual__<script>alert(1)</script>", logical_date="2025-01-02T03:04:05+00:00")
    return {
        "series": series, "entries": entries, "run": run, "reference_url": reference_url, "noisy": noisy, "s": s,
        "V": V, "auto_rank": auto.rank, "threshold": auto.auto_rule.threshold, "frob": frob, "choices": choices,
    }  # fmt: skip


def _call(inputs: dict[str, Any], **overrides: Any) -> dict:
    kwargs = {k: inputs[k] for k in ("series", "entries", "run", "reference_url")}
    kwargs.update(overrides)
    return report.write_report(kwargs.pop("series"), kwargs.pop("entries"), kwargs.pop("run"), **kwargs)


def _series_url(inputs: dict[str, Any]) -> Path:
    return Path(inputs["series"].series_url)


def _img_sources(page: str) -> list[str]:
    tags = re.findall(r"<img\b[^>]*>", page)
    sources = [re.search(r'\bsrc="([^"]*)"', tag) for tag in tags]
    assert all(sources), "every <img> has a src"
    return [m.group(1) for m in sources if m]


def test_middle_slice_reconstruction_matches_full_product(inputs: dict[str, Any]) -> None:
    A, V = inputs["noisy"], inputs["V"]
    matrix = matrix_store.open_matrix(inputs["series"].matrix_url)
    original, recon = report.middle_slice_reconstructions(matrix, V, [1, 4, 12], column=5)
    assert sorted(recon) == [1, 4, 12]
    np.testing.assert_allclose(original, A[:, 5], atol=1e-3)  # stored as float32
    for r, column in recon.items():
        np.testing.assert_allclose(column, (A @ V[:, :r] @ V[:, :r].T)[:, 5], atol=1e-2)
    np.testing.assert_allclose(recon[12], A[:, 5], atol=1e-2)  # full rank gives the input back
    with pytest.raises(ParameterError, match="outside"):
        report.middle_slice_reconstructions(matrix, V, [13], column=5)


def test_report_json_and_self_contained_html(inputs: dict[str, Any]) -> None:
    from PIL import Image

    summary = _call(inputs)
    series = _series_url(inputs)
    on_disk = json.loads((series / "report.json").read_text())
    assert on_disk == summary
    assert on_disk["series_instance_uid"] == SERIES_UID
    assert on_disk["study_instance_uid"] == STUDY_UID
    auto = inputs["auto_rank"]
    assert [r["rank"] for r in on_disk["ranks"]] == sorted({2, 6, 11, auto})
    by_rank = {r["rank"]: r for r in on_disk["ranks"]}
    assert [r["rule"] for r in by_rank[auto]["rules"]] == ["gavish_donoho"]
    assert [r["rule"] for r in by_rank[6]["rules"]] == ["explicit", "drop_percent"]
    assert on_disk["auto_rank"] == auto
    assert on_disk["gavish_donoho"]["threshold"] == pytest.approx(inputs["threshold"])
    assert on_disk["failed_ranks"] == [6]
    assert by_rank[6]["status"] == "failed" and by_rank[6]["metrics"] is None
    assert by_rank[2]["metrics"]["psnr_db_denoised"] == pytest.approx(inputs["entries"][0].metrics["psnr_db_denoised"])
    s, frob = inputs["s"], inputs["frob"]
    assert by_rank[2]["retained_energy"] == pytest.approx(np.sum(s[:2] ** 2) / frob**2)
    assert on_disk["params_hash"] == inputs["series"].params_hash and on_disk["params"]["ranks"] == [2, 6]
    assert on_disk["svd"]["method"] == "exact" and on_disk["svd"]["timings"]["gram"] == 0.01
    assert on_disk["run"]["run_id"] == inputs["run"].run_id
    assert on_disk["versions"]["numpy"] == np.__version__  # computed when run_info has none
    assert on_disk["middle_slice"] == {"column": SLICES // 2, "position_mm": 2.5 * (SLICES // 2)}

    page = (series / "report.html").read_text()
    assert SERIES_UID in page
    assert "Thorax &lt;low dose&gt; &amp; &#34;test&#34;" in page  # description escaped
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the run id, escaped
    assert not re.search(r'(?:src|href)\s*=\s*["\']?\s*(?:https?:)?//', page, re.I), "no external resources"
    assert "@import" not in page and "url(" not in page
    assert f"{inputs['threshold']:.6g}" in page and "drop 50 %" in page
    sources = _img_sources(page)
    # scree + (original, reference, 4 ranks) x 2 windows + (reference, 4 ranks) difference maps
    assert len(sources) == 1 + 6 * 2 + 5
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True))) as img:
            img.verify()
            assert img.format == "PNG"
    tile = Image.open(io.BytesIO(base64.b64decode(sources[1].split(",", 1)[1])))
    assert tile.size == (COLUMNS, ROWS)
    assert np.asarray(tile).std() > 0
    labels = [f"Rank {r}</b>" for r in sorted({2, 6, 11, auto})]
    assert [page.index(label) for label in labels] == sorted(page.index(label) for label in labels)
    # The metrics table shows the writer's input -> denoised pairs.
    m2 = inputs["entries"][0].metrics
    assert f"{m2['psnr_db_input']:.4g} → {m2['psnr_db_denoised']:.4g}" in page


def test_report_is_deterministic_and_json_written_last(inputs: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[str] = []
    real = report.storage.write_bytes

    def recording(url: str, data: bytes, storage_options: Any = None) -> None:
        written.append(url.rsplit("/", 1)[-1])
        real(url, data, storage_options)

    monkeypatch.setattr(report.storage, "write_bytes", recording)
    run = inputs["run"].model_copy(update={"versions": {"ctdenoise": "0.1.0"}})
    _call(inputs, run=run)
    series = _series_url(inputs)
    first = {name: (series / name).read_bytes() for name in ("report.html", "report.json")}
    _call(inputs, run=run)
    assert written == ["report.html", "report.json"] * 2
    assert {name: (series / name).read_bytes() for name in first} == first
    assert json.loads(first["report.json"])["versions"] == {"ctdenoise": "0.1.0"}
    assert not [p for p in series.iterdir() if p.name.startswith(".")], "no temporary files left"


def test_report_without_reference_or_threshold(inputs: dict[str, Any]) -> None:
    from ctdenoise.records import RankChoice, RuleDetail

    series = inputs["series"]
    explicit = RankChoice(rank=2, rules=(RuleDetail(rule="explicit"),))
    drop = RankChoice(rank=5, rules=(RuleDetail(rule="drop_percent", percent=60.0),))
    entries = [ReportEntry(Output(series=series, mode="global", rank=2, choice=explicit),
                           {"rank": 2, "noise_std_hu_input": 30.0, "noise_std_hu_denoised": 12.5}),
               ReportEntry(Output(series=series, mode="global", rank=5, choice=drop), None)]  # fmt: skip
    summary = _call(inputs, entries=entries, reference_url=None)
    assert summary["auto_rank"] is None and summary["gavish_donoho"] is None
    assert summary["source"]["reference_url"] is None
    assert summary["ranks"][1]["rules"] == [{"rule": "drop_percent", "percent": 60.0}]
    page = (_series_url(inputs) / "report.html").read_text()
    assert "PSNR" not in page and "30 → 12.5" in page and "drop 60 %" in page
    assert "Reference</b>" not in page
    assert len(_img_sources(page)) == 1 + 3 * 2 + 2


def test_every_rule_keeps_its_own_detail_from_selection_to_report(inputs: dict[str, Any]) -> None:
    """A rank several rules chose keeps each rule's detail (the threshold reaches the plot, each
    drop percent its own count): the rank rule stays a typed object from selection to report."""
    from ctdenoise.ranks import select_ranks

    s, shape, series = inputs["s"], inputs["noisy"].shape, inputs["series"]
    auto = inputs["auto_rank"]
    same_as_auto = 100.0 * (SLICES - auto) / SLICES + 0.01  # drops SLICES - auto values: keeps the GD rank
    choices = select_ranks(s, shape, ranks=[auto], drop_percents=[50, same_as_auto], frobenius_norm=inputs["frob"])
    assert [len(c.rules) for c in choices if c.rank == auto] == [3]
    entries = [ReportEntry(Output(series=series, mode="global", rank=c.rank, choice=c), {"rank": c.rank}) for c in choices]
    summary = _call(inputs, entries=entries)
    assert summary["auto_rank"] == inputs["auto_rank"]
    assert summary["gavish_donoho"]["threshold"] == pytest.approx(inputs["threshold"])
    assert summary["gavish_donoho"]["rule"] == "gavish_donoho" and "percent" not in summary["gavish_donoho"]
    drops = {e["rank"]: r for e in summary["ranks"] for r in e["rules"] if r["rule"] == "drop_percent"}
    assert drops == {
        6: {"rule": "drop_percent", "percent": 50.0, "dropped": 6},
        auto: {"rule": "drop_percent", "percent": same_as_auto, "dropped": SLICES - auto},
    }
    assert summary["source"]["source_url"] == "s3://scans/patient-1/"
    page = (_series_url(inputs) / "report.html").read_text()
    assert "s3://scans/patient-1/" in page and "drop 50 %" in page


def test_report_rejects_bad_inputs(inputs: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="at least one output"):
        _call(inputs, entries=[])
    with pytest.raises(ParameterError, match="listed twice"):
        _call(inputs, entries=inputs["entries"] + inputs["entries"][:1])
    other = str(tmp_path / "other.zarr")
    matrix_store.write_matrix(np.zeros((ROWS * COLUMNS, SLICES + 1)), _matrix_attrs(), other)
    with pytest.raises(InputError, match="other.zarr"):
        _call(inputs, reference_url=other)
    elsewhere = make_series(tmp_path / "elsewhere", {"modes": ["global"]})
    matrix_store.write_matrix(np.zeros((ROWS * COLUMNS, SLICES + 1)), _matrix_attrs(), elsewhere.matrix_url)
    matrix_store.write_svd(elsewhere.svd_url, inputs["s"], inputs["V"], {"matrix_shape": [ROWS * COLUMNS, SLICES]})
    with pytest.raises(InputError, match="slices"):
        _call(inputs, series=elsewhere, reference_url=None)
    assert not (_series_url(inputs) / "report.json").exists()


def test_report_on_s3(inputs: dict[str, Any], s3_bucket: str) -> None:
    from ctdenoise import storage

    on_s3 = inputs["series"].model_copy(update={"denoised_url": f"s3://{s3_bucket}/denoised"})
    url = on_s3.series_url
    summary = _call(inputs, series=on_s3)
    assert json.loads(storage.read_bytes(f"{url}/report.json")) == summary
    assert storage.read_bytes(f"{url}/report.html").startswith(b"<!DOCTYPE html>")


# --------------------------------------------------------------------------------------------
# Rendering in a real browser

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars",
]


def run_chromium(args: list[str], profile: Path, timeout: float = 60.0) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe is not None
    return subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def screenshot(html_path: Path, png_path: Path, profile: Path, size: tuple[int, int] = (1400, 2000)) -> None:
    """Render ``html_path`` in headless Chromium to ``png_path`` (used by the test and the docs shot)."""
    result = run_chromium(
        [f"--screenshot={png_path}", f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=5000",
         html_path.resolve().as_uri()],
        profile,
    )
    assert png_path.exists(), f"no screenshot: {result.stderr[-2000:]}"


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="chromium not installed (make test installs it via scripts/system-deps.sh)",
)
def test_report_renders_in_headless_chromium(inputs: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    _call(inputs)
    page_path = _series_url(inputs) / "report.html"
    page = page_path.read_text()
    n_img = len(re.findall(r"<img\b", page))

    # Count images the browser actually decoded: a probe copy of the page writes it into the DOM.
    probe = tmp_path / "probe.html"
    script = (
        "<script>window.addEventListener('load', () => { document.body.dataset.imgs = "
        "[...document.images].filter(i => i.complete && i.naturalWidth > 0).length; });</script>"
    )
    probe.write_text(page.replace("</body>", script + "</body>"))
    dom = run_chromium(
        ["--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        tmp_path / "profile-dom",
    )
    found = re.search(r'data-imgs="(\d+)"', dom.stdout)
    assert found, f"probe script did not run: {dom.stderr[-2000:]}"
    assert int(found.group(1)) == n_img

    shot = tmp_path / "shot.png"
    screenshot(page_path, shot, tmp_path / "profile-shot")
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1400)
    assert pixels.std() > 0, "blank screenshot"
    assert (pixels < 64).mean() > 0.01, "dark CT tiles visible in the screenshot"
