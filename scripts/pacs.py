"""A throw-away Orthanc PACS on 127.0.0.1: the delivery tests, ``make demo`` and ``make ui`` use it.

``orthanc_server()`` writes a private configuration and storage folder, starts the Debian
package's ``Orthanc`` (with the DICOMweb plugin, and the Web Viewer plugin on request) on free
ports in its own process group, waits until its REST API answers, and stops it at the end,
whatever happens. The instance is locked down as a PACS administrator would: HTTP from this
machine only, and DIMSE storage and queries only from the registered calling AE at 127.0.0.1
(``DicomAlwaysAllowStore`` off, ``DicomCheckModalityHost`` on); the called AE title is checked.

Orthanc 1.10 listens for DICOM on every interface (it has no bind address option): the
registered-AE rule above is what keeps other hosts from storing or querying.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import devenv

ORTHANC = "/usr/sbin/Orthanc"
PLUGINS = Path("/usr/share/orthanc/plugins")
DICOMWEB_PLUGIN = PLUGINS / "libOrthancDicomWeb.so"
WEBVIEWER_PLUGIN = PLUGINS / "libOrthancWebViewer.so"
SERVEFOLDERS_PLUGIN = PLUGINS / "libServeFolders.so"
COMPARE_ROOT = "/ctdenoise"  # where compare.html is served (ServeFolders plugin)
CALLING_AE = "CTDENOISE"
MISSING = "Orthanc is not installed: run scripts/system-deps.sh (Debian packages orthanc, orthanc-dicomweb, orthanc-webviewer)"


@dataclass
class Orthanc:
    """A running Orthanc: its endpoints and its REST API (for checks)."""

    http_url: str
    dicom_port: int
    aet: str
    storage: Path
    log: Path
    process: subprocess.Popen

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    @property
    def compare_url(self) -> str:
        """The side-by-side page (with ``web_viewer``): every derived series beside its original."""
        return f"{self.http_url}{COMPARE_ROOT}/compare.html"

    def get(self, path: str, auth: tuple[str, str] | None = None) -> Any:
        request = urllib.request.Request(f"{self.http_url}{path}")
        if auth:
            import base64

            request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    def series(self, auth: tuple[str, str] | None = None) -> dict[str, dict[str, Any]]:
        """``{SeriesInstanceUID: {"instances", "study", "description", "number"}}`` of every stored series."""
        out = {}
        for s in self.get("/series?expand", auth):
            tags = s["MainDicomTags"]
            study = self.get(f"/studies/{s['ParentStudy']}", auth)["MainDicomTags"]["StudyInstanceUID"]
            out[tags["SeriesInstanceUID"]] = {"instances": len(s["Instances"]), "study": study,
                                              "description": tags.get("SeriesDescription"), "number": tags.get("SeriesNumber"),
                                              "id": s["ID"]}  # fmt: skip
        return out


def airflow_environment(server: Orthanc) -> dict[str, str]:
    """Airflow connections to ``server`` (DICOMweb and DIMSE) and the setting naming both as the
    DAG's destinations: what ``make demo`` and ``make ui`` give the DAG."""
    web = {"conn_type": "http", "host": server.dicomweb_url}
    dimse = {"conn_type": "dimse", "host": "127.0.0.1", "port": server.dicom_port,
             "extra": {"called_ae": server.aet, "calling_ae": CALLING_AE}}  # fmt: skip
    return {"AIRFLOW_CONN_PACS_DICOMWEB": json.dumps(web), "AIRFLOW_CONN_PACS_DIMSE": json.dumps(dimse),
            "CT_DENOISE_DESTINATIONS": "pacs_dicomweb,pacs_dimse"}  # fmt: skip


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configuration(storage: Path, http_port: int, dicom_port: int, *, aet: str = "ORTHANC",
                  users: Mapping[str, str] | None = None, lua: str | None = None,
                  transfer_syntaxes: Sequence[str] | None = None, web_viewer: bool = False) -> dict[str, Any]:  # fmt: skip
    """The Orthanc configuration of :func:`orthanc_server` (module docstring)."""
    plugins = [str(DICOMWEB_PLUGIN)] + ([str(WEBVIEWER_PLUGIN), str(SERVEFOLDERS_PLUGIN)] if web_viewer else [])
    config: dict[str, Any] = {
        "Name": "ctdenoise-pacs", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "Plugins": plugins, "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": aet,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(users), "RegisteredUsers": dict(users or {}),
        "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False,
        "DicomCheckModalityHost": True, "DicomModalities": {"ctdenoise": {"AET": CALLING_AE, "Host": "127.0.0.1", "Port": 104}},
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False},
        "HttpDescribeErrors": True, "StorageCompression": False, "ExecuteLuaEnabled": False,
    }  # fmt: skip
    if web_viewer:
        pages = storage.parent / "pages"
        pages.mkdir(parents=True, exist_ok=True)
        (pages / "compare.html").write_text(COMPARE_PAGE)
        config["ServeFolders"] = {COMPARE_ROOT: str(pages)}
    if transfer_syntaxes is not None:
        config["AcceptedTransferSyntaxes"] = list(transfer_syntaxes)
    if lua:
        script = storage.parent / "filter.lua"
        script.write_text(lua)
        config["LuaScripts"] = [str(script)]
    return config


@contextmanager
def orthanc_server(workdir: Path | None = None, *, startup_seconds: float = 60.0, http_port: int | None = None,
                   **options: Any) -> Iterator[Orthanc]:  # fmt: skip
    """A running Orthanc on free ports (options: see :func:`configuration`), stopped at the end."""
    if not Path(ORTHANC).exists() or not DICOMWEB_PLUGIN.exists():
        raise RuntimeError(MISSING)
    root = Path(workdir or tempfile.mkdtemp(prefix="ctdenoise-orthanc-")).resolve()  # Orthanc reads paths relative to its config
    storage = root / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = http_port or free_port(), free_port()
    config = configuration(storage, http_port, dicom_port, **options)
    (root / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = root / "orthanc.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([ORTHANC, str(root / "orthanc.json")], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    server = Orthanc(http_url=f"http://127.0.0.1:{http_port}", dicom_port=dicom_port, aet=config["DicomAet"],
                     storage=storage, log=log, process=proc)  # fmt: skip
    try:
        _wait_ready(server, dict(options.get("users") or {}), startup_seconds)
        yield server
    finally:
        stop(proc)


def _wait_ready(server: Orthanc, users: dict[str, str], seconds: float) -> None:
    auth = next(iter(users.items()), None)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"Orthanc exited with {server.process.returncode} at start-up; log {server.log}:\n{tail}")
        try:
            server.get("/system", auth)
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"Orthanc did not answer on {server.http_url} within {seconds} s; log {server.log}")


def stop(proc: subprocess.Popen) -> None:
    """Stop Orthanc's process group and wait for it (its storage folder may then be reused)."""
    if proc.poll() is None:
        devenv.stop_group(proc)


COMPARE_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>ctdenoise: original and denoised side by side</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 12px; background: #111; color: #eee; }
 h1 { font-size: 18px; margin: 4px 0 8px; } h2 { font-size: 14px; margin: 14px 0 4px; color: #fc8d59; }
 .pair { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; }
 .pair figure { margin: 0; } figcaption { color: #aaa; margin: 2px 0; }
 iframe { width: 100%; height: 560px; border: 1px solid #333; background: #000; }
</style></head>
<body><h1>Original | denoised (Orthanc Web Viewer; each derived series beside the series it was derived from)</h1>
<div id="pairs">Looking for derived series in this Orthanc...</div>
<script>
// Pairs every series whose instances reference a source series (ReferencedSeriesSequence, as
// ctdenoise writes them) with that source, both stored here. Served by Orthanc itself, so the
// REST calls are same-origin.
async function json(url) { const r = await fetch(url); return r.json(); }
function viewer(id) { return '../web-viewer/app/viewer.html?series=' + id; }
async function main() {
  const all = await json('../series?expand');
  const byUid = {}; all.forEach(s => byUid[s.MainDicomTags.SeriesInstanceUID] = s);
  const box = document.getElementById('pairs'); box.textContent = '';
  const wanted = new URLSearchParams(location.search).get('only');
  for (const s of all) {
    const tags = await json('../instances/' + s.Instances[0] + '/tags?simplify');
    const ref = (tags.ReferencedSeriesSequence || [])[0];
    const original = ref && byUid[ref.SeriesInstanceUID];
    if (!original || (wanted && !(s.MainDicomTags.SeriesDescription || '').includes(wanted))) continue;
    const h = document.createElement('h2');
    h.textContent = (tags.PatientName || '') + ' / ' + (tags.StudyDescription || tags.StudyInstanceUID);
    const pair = document.createElement('div'); pair.className = 'pair';
    for (const x of [original, s]) {
      const f = document.createElement('figure'), c = document.createElement('figcaption'), i = document.createElement('iframe');
      c.textContent = (x.MainDicomTags.SeriesNumber || '') + '  ' + (x.MainDicomTags.SeriesDescription || x.ID);
      i.src = viewer(x.ID); f.append(c, i); pair.append(f);
    }
    box.append(h, pair);
  }
  if (!box.childNodes.length) box.textContent = 'No derived series yet: deliver one (ctdenoise deliver, or the deliver step of the DAG).';
}
main();
</script></body></html>
"""


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/pacs.py STORAGE [--http-port 8042]``: Orthanc with the Web Viewer on a
    kept storage folder (``make demo`` leaves one in demo-output/pacs) until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="Orthanc's folder (storage/ inside); created if missing")
    parser.add_argument("--http-port", type=int, default=0, help="HTTP port (default: a free one)")
    args = parser.parse_args(argv)

    def interrupted(signum: int, frame: Any) -> None:  # SIGTERM too stops Orthanc (its own process group) first
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    with orthanc_server(args.workdir, web_viewer=True, http_port=args.http_port or None) as server:
        print(f"Orthanc {server.http_url} (DICOM port {server.dicom_port}, AE {server.aet}); side by side: {server.compare_url}")
        print("Ctrl-C stops it.", flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
