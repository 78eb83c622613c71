"""`make ui`: Airflow standalone on http://127.0.0.1:8080 with the ct_denoise DAG, local runtime.

Starts a moto S3 server on 127.0.0.1 (bucket ``ct-denoise``, one simulated low-dose series in
yesterday's partition ``incoming/<yesterday>/``, which the first scheduled ``@daily`` run takes),
an Orthanc PACS with the Web Viewer (``scripts/pacs.py``, storage in ``.airflow/pacs/``) holding
that series' original, prepares ``.airflow/`` (SQLite, pools, connections to moto, to Spark
local[2] and to the PACS as the DAG's delivery destinations) and runs ``airflow standalone`` with
parallelism limited to fit two cores. Once the run's ``deliver`` step has sent the automatic
outputs, the compare page shows each beside the original. Ctrl-C stops everything (standalone
runs in its own process group).

UI_SIZE / UI_SLICES set the sample phantom (default 128 x 128 x 32).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import devenv
import pacs
from ctdenoise.params import RunParams

REPO = Path(__file__).resolve().parents[1]
HOME = REPO / ".airflow"
BUCKET = "ct-denoise"


def _on_sigterm(signum, frame):  # noqa: ANN001 (signal API)
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    yesterday = (datetime.now(timezone.utc).date() - timedelta(days=1)).isoformat()
    size, slices = int(os.environ.get("UI_SIZE", "128")), int(os.environ.get("UI_SLICES", "32"))
    with devenv.moto_server() as endpoint, pacs.orthanc_server(HOME / "pacs", web_viewer=True) as orthanc:
        devenv.create_bucket(endpoint, BUCKET)
        sample = HOME / "sample-series"
        if not sample.exists():
            from ctdenoise.phantom import write_phantom_series

            write_phantom_series(str(sample), size=size, slices=slices, seed=0)
        n = devenv.upload_folder(sample, f"s3://{BUCKET}/incoming/{yesterday}/sample", devenv.s3_options(endpoint))
        print(f"moto S3 on {endpoint}: {n} files of a sample series in s3://{BUCKET}/incoming/{yesterday}/sample/")
        store_original(orthanc, sample)
        env = devenv.airflow_env(
            HOME,
            endpoint,
            bucket=BUCKET,
            extra={
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": "8080",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "CT_DENOISE_SETTLE_SECONDS": "30",
                "CT_DENOISE_WAIT_TIMEOUT_SECONDS": "600",
                **pacs.airflow_environment(orthanc),
            },
        )
        log = HOME / "ui-setup.log"
        devenv.migrate(env, log)
        devenv.create_pools(env, log)
        print(
            "\nAirflow UI: http://127.0.0.1:8080  (no login: every user is admin on this local instance)\n"
            f"The scheduled run for {yesterday} starts at once and processes the sample. To run again:\n"
            f"DAGs > ct_denoise > Trigger, logical date {yesterday}, with force on (the form shows\n"
            f"{', '.join(RunParams.model_fields)}). Ctrl-C stops everything.\n"
            f"PACS (Orthanc, DICOMweb {orthanc.dicomweb_url}, DIMSE {orthanc.aet}@127.0.0.1:{orthanc.dicom_port}): "
            f"{orthanc.http_url}/app/explorer.html\nOriginal and denoised side by side, once deliver has run: {orthanc.compare_url}\n"
        )
        airflow = str(Path(sys.executable).parent / "airflow")
        proc = subprocess.Popen([airflow, "standalone"], env=env, start_new_session=True)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            print("\nstopping airflow standalone...")
            return 0
        finally:
            if proc.poll() is None:
                devenv.stop_group(proc)


def store_original(orthanc: pacs.Orthanc, folder: Path) -> None:
    """The sample's original into the PACS, as the scanner would have sent it (delivered again
    harmlessly on every start: same SOP Instance UIDs)."""
    from ctdenoise.delivery import deliver
    from ctdenoise.delivery.destinations import dimse_from_cli

    deliver(str(folder), dimse_from_cli(f"127.0.0.1:{orthanc.dicom_port}", orthanc.aet, pacs.CALLING_AE)).check()


if __name__ == "__main__":
    sys.exit(main())
