"""`make demo`: the whole ct_denoise DAG on simulated low-dose scans, on this machine.

1. starts a moto S3 server on a free 127.0.0.1 port;
2. simulates two low-dose phantom series (with their noise-free truth) and one broken series
   (two slices at one position), uploads them to today's partition ``incoming/<today>/``;
3. starts an Orthanc PACS (``scripts/pacs.py``, storage in ``demo-output/pacs/``) holding the
   two original series, as a hospital's PACS would;
4. runs ``airflow dags test ct_denoise <today>`` on the local runtime (Spark local[2]), whose
   ``deliver`` step sends the automatic outputs to that Orthanc by DICOMweb and by DIMSE;
5. downloads what it shows into ``demo-output/denoised/`` and prints, per series and output
   (global mode: each rank; local mode: each threshold multiplier), PSNR and SSIM against the
   truth (for the automatic outputs; every output with DEMO_DOWNLOAD=all), the noise estimate
   and the writer's seconds, the report paths, what was delivered to the
   PACS, and how to look at it (``python scripts/pacs.py demo-output/pacs`` or ``make ui``);
6. stops everything it started, also on Ctrl-C.

Sizes via environment: DEMO_SIZE (512), DEMO_SLICES (64), DEMO_PHOTONS (2e4), DEMO_DATE (today).
It downloads what it shows (reports, previews, metrics, the automatic outputs' DICOM, which the
table compares with the truth); DEMO_DOWNLOAD=all downloads every output and compares each.
Exit status: 0 when both good series were published and the broken one was refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import devenv
import pacs

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "demo-output"
BUCKET = "ct-denoise"
STARTED = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {message}", flush=True)


def _on_sigterm(signum, frame):  # noqa: ANN001 (signal API)
    raise KeyboardInterrupt


def follow_tasks(home: Path, stop: threading.Event) -> None:
    """Print task state changes while ``airflow dags test`` runs (read from its SQLite database)."""
    seen: dict[tuple[str, int], str | None] = {}
    while not stop.wait(3):
        try:
            _, tasks = devenv.task_states(home)
        except Exception:  # noqa: BLE001 (the database may be locked mid-write; try again)
            continue
        for t in tasks:
            key = (t["task_id"], t["map_index"])
            if t["state"] and seen.get(key) != t["state"]:
                seen[key] = t["state"]
                label = t["rendered_map_index"] or (str(t["map_index"]) if t["map_index"] >= 0 else "")
                say(f"  {t['task_id']:<16} {label:<40} {t['state']}")


def rule_names(rules: list[dict]) -> str:
    """'Gavish-Donoho, drop 10%' from the report's rule entries."""
    from ctdenoise.records import RuleDetail

    return ", ".join(RuleDetail.model_validate(rule).label.replace("–", "-").replace(" %", "%") for rule in rules)


def evaluate(denoised: Path, truths: dict[str, Path], inputs: dict[str, Path]) -> list[dict]:
    """One row per (series, input or rank): quality against the truth, from the published DICOM."""
    from ctdenoise.evaluate import compare, load_volume

    rows = []
    for report_json in sorted(denoised.glob("*/report.json")):
        report = json.loads(report_json.read_text())
        source_uid = report.get("series_instance_uid") or report_json.parent.name
        truth_dir, input_dir = truths.get(source_uid), inputs.get(source_uid)
        truth = load_volume(truth_dir)[0] if truth_dir else None
        if input_dir is not None and truth is not None:
            rows.append({"series": source_uid, "what": "low-dose input", **compare(load_volume(input_dir)[0], truth)})
        outputs = [
            (f"rank-{e['rank']}", f"global rank {e['rank']} ({rule_names(e.get('rules', []))})", e.get("metrics") or {})
            for e in report.get("ranks", [])
        ]
        local = report.get("local") or {}
        stage = " + NLM" if local.get("inplane") == "nlm" else ""
        outputs += [
            (f"local-x{o['multiplier']:g}", f"local{stage} x{o['multiplier']:g}" + (" (automatic)" if o["multiplier"] == local.get("automatic_multiplier") else ""),
             o.get("metrics") or {})
            for o in local.get("outputs", [])
        ]  # fmt: skip
        for folder, what, metrics in outputs:
            out_dir = report_json.parent / folder
            row = {"series": source_uid, "what": what}
            if truth is not None and (out_dir / "dicom").is_dir():
                row.update(compare(load_volume(out_dir / "dicom")[0], truth))
            else:  # not downloaded (DEMO_DOWNLOAD=all compares it too): the writer's own noise estimate
                row["noise_std_hu"] = metrics.get("noise_std_hu_denoised")
            row["seconds"] = metrics.get("seconds")
            rows.append(row)
        rows.append({"series": source_uid, "what": f"report: {report_json.with_suffix('.html').relative_to(REPO)}"})
    return rows


def print_table(rows: list[dict]) -> None:
    def fmt(value, spec):  # noqa: ANN001
        return format(value, spec) if isinstance(value, int | float) else format("-", ">" + spec.split(".")[0])

    print(f"\n{'series':<28} {'input / mode, rank or multiplier':<44} {'PSNR dB':>8} {'SSIM':>6} {'noise HU':>9} {'seconds':>8}")
    for row in rows:
        series = row["series"]
        short = series if len(series) <= 28 else "..." + series[-25:]
        if row["what"].startswith("report:"):
            print(f"{short:<28} {row['what']}")
            continue
        print(
            f"{short:<28} {row['what']:<44} {fmt(row.get('psnr_db'), '8.2f')} {fmt(row.get('ssim'), '6.3f')} "
            f"{fmt(row.get('noise_std_hu'), '9.1f')} {fmt(row.get('seconds'), '8.1f')}"
        )


def main() -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    size = int(os.environ.get("DEMO_SIZE", "512"))
    slices = int(os.environ.get("DEMO_SLICES", "64"))
    photons = float(os.environ.get("DEMO_PHOTONS", "2e4"))
    date = os.environ.get("DEMO_DATE") or datetime.now(timezone.utc).date().isoformat()
    if OUT.exists():
        shutil.rmtree(OUT)
    work = OUT / ".work"
    work.mkdir(parents=True)
    from ctdenoise.phantom import write_phantom_series

    truths: dict[str, Path] = {}
    inputs: dict[str, Path] = {}
    say(f"demo: partition incoming/{date}/, phantoms {size}x{size}x{slices} at {photons:g} photons per ray")
    with contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(devenv.moto_server())
        say(f"moto S3 server on {endpoint}")
        devenv.create_bucket(endpoint, BUCKET)
        options = devenv.s3_options(endpoint)
        for i, name in enumerate(("series-a", "series-b")):
            say(f"simulating {name} (radon, Poisson counts, filtered back projection)...")
            record = write_phantom_series(
                str(work / name), size=size, slices=slices, photons=photons, seed=i + 1, truth=str(work / f"{name}-truth")
            )
            truths[record["series_instance_uid"]] = work / f"{name}-truth"
            inputs[record["series_instance_uid"]] = work / name
            n = devenv.upload_folder(work / name, f"s3://{BUCKET}/incoming/{date}/{name}", options)
            say(f"uploaded {n} files of {name} ({record['series_instance_uid']})")
        bad_uid = devenv.write_bad_series(work / "series-a", work / "series-broken")
        n = devenv.upload_folder(work / "series-broken", f"s3://{BUCKET}/incoming/{date}/series-broken", options)
        say(f"uploaded {n} files of series-broken ({bad_uid}: two slices at one position)")

        orthanc = stack.enter_context(pacs.orthanc_server(OUT / "pacs", web_viewer=True))
        say(f"Orthanc PACS on {orthanc.http_url} (DICOM port {orthanc.dicom_port}): storing the two original series")
        deliver_originals(orthanc, [work / "series-a", work / "series-b"])
        env = devenv.airflow_env(work / "airflow-home", endpoint, bucket=BUCKET, extra=pacs.airflow_environment(orthanc))
        log = work / "airflow.log"
        say("airflow db migrate...")
        devenv.migrate(env, log)
        say(f"airflow dags test ct_denoise {date} (log: {log.relative_to(REPO)})")
        stop = threading.Event()
        follower = threading.Thread(target=follow_tasks, args=(work / "airflow-home", stop), daemon=True)
        follower.start()
        try:
            result = devenv.dags_test(env, date, log)
        finally:
            stop.set()
            follower.join(timeout=5)
        say(f"dag run {result.run_state} (exit {result.returncode}) in {result.seconds} s")

        fs, _ = devenv_fs(endpoint)
        everything = os.environ.get("DEMO_DOWNLOAD", "").lower() == "all"
        say(f"downloading {'all of denoised/' if everything else 'reports, previews, metrics and the automatic outputs'}"
            " into demo-output/denoised/")  # fmt: skip
        download(fs, OUT / "denoised", everything)
        in_pacs = orthanc.series()

    rows = evaluate(OUT / "denoised", truths, inputs)
    print_table(rows)
    published = {r["series"] for r in rows if r["what"].startswith("report:")}
    refused = bad_uid not in published
    print(f"\nbroken series {bad_uid}: {'refused, nothing published' if refused else 'PUBLISHED (unexpected)'}")
    delivered = print_deliveries(OUT / "denoised", in_pacs)
    print(f"outputs in {OUT.relative_to(REPO)}/denoised/<SeriesInstanceUID>/ ; total {time.perf_counter() - STARTED:.0f} s")
    print(f"PACS: to look at originals and denoised side by side, run `python scripts/pacs.py {(OUT / 'pacs').relative_to(REPO)}`"
          " and open the compare page it prints (or `make ui`)")  # fmt: skip
    ok = len(published & set(truths)) == 2 and refused and delivered
    if not ok:
        print(result.log_tail(60), file=sys.stderr)
    return 0 if ok else 1


def download(fs, into: Path, everything: bool) -> None:  # noqa: ANN001 (an fsspec filesystem)
    """What the demo shows: every small file (reports, previews, metrics, delivery records) and
    the DICOM of the automatic outputs, which the table compares with the truth; DEMO_DOWNLOAD=all
    fetches every output's DICOM too (a 512 x 512 x 64 series is ~33 MB per output)."""
    root = f"{BUCKET}/denoised"
    if not fs.exists(root):
        return
    from ctdenoise.delivery.choice import published_outputs  # the automatic outputs as the DAG delivers them

    automatic = {f"{path.rsplit('/', 2)[-2]}/{o.name}" for path in fs.glob(f"{root}/*/report.json")
                 for o in published_outputs(json.loads(fs.cat_file(path))) if o.automatic}  # fmt: skip
    files = [p for p in fs.find(root) if everything or "/dicom/" not in p or "/".join(p[len(root) + 1 :].split("/")[:2]) in automatic]
    for path in files:
        target = into / path[len(root) + 1 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(path, str(target))


def deliver_originals(orthanc: pacs.Orthanc, folders: list[Path]) -> None:
    """The low-dose originals into the PACS first, as a scanner would have sent them."""
    from ctdenoise.delivery import deliver
    from ctdenoise.delivery.destinations import dimse_from_cli

    for folder in folders:
        deliver(str(folder), dimse_from_cli(f"127.0.0.1:{orthanc.dicom_port}", orthanc.aet, pacs.CALLING_AE)).check()


def print_deliveries(denoised: Path, in_pacs: dict[str, dict]) -> bool:
    """What each series' deliveries.json says, and what the PACS holds; True when every
    delivery recorded was confirmed and at least one was made."""
    rows = []
    for path in sorted(denoised.glob("*/deliveries.json")):
        for d in json.loads(path.read_text())["deliveries"]:
            o = d["outcome"]
            held = in_pacs.get(o["series_instance_uid"], {})
            rows.append((path.parent.name[-12:], d["output"], d["destination_name"], o["status"], o["sent"], o["confirmed"],
                         held.get("description") or "-"))  # fmt: skip
    print(f"\n{'series':<14} {'output':<11} {'destination':<14} {'status':<10} {'sent':>4} {'conf':>4}  in the PACS as")
    for row in rows:
        print(f"...{row[0]:<11} {row[1]:<11} {row[2]:<14} {row[3]:<10} {row[4]:>4} {row[5]!s:>4}  {row[6]}")
    return bool(rows) and all(r[3] == "delivered" for r in rows)


def devenv_fs(endpoint: str):  # noqa: ANN201
    import fsspec

    return fsspec.core.url_to_fs(f"s3://{BUCKET}", **devenv.s3_options(endpoint))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: services stopped", file=sys.stderr)
        sys.exit(130)
