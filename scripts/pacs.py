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
import os
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

ORTHANC = "/usr/sbin/Orthanc"
PLUGINS = Path("/usr/share/orthanc/plugins")
DICOMWEB_PLUGIN = PLUGINS / "libOrthancDicomWeb.so"
WEBVIEWER_PLUGIN = PLUGINS / "libOrthancWebViewer.so"
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configuration(storage: Path, http_port: int, dicom_port: int, *, aet: str = "ORTHANC",
                  users: Mapping[str, str] | None = None, lua: str | None = None,
                  transfer_syntaxes: Sequence[str] | None = None, web_viewer: bool = False) -> dict[str, Any]:  # fmt: skip
    """The Orthanc configuration of :func:`orthanc_server` (module docstring)."""
    plugins = [str(DICOMWEB_PLUGIN)] + ([str(WEBVIEWER_PLUGIN)] if web_viewer else [])
    config: dict[str, Any] = {
        "Name": "ctdenoise-pacs", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "Plugins": plugins, "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": aet,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(users), "RegisteredUsers": dict(users or {}),
        "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False,
        "DicomCheckModalityHost": True, "DicomModalities": {"ctdenoise": {"AET": CALLING_AE, "Host": "127.0.0.1", "Port": 104}},
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False},
        "HttpDescribeErrors": True, "StorageCompression": False, "ExecuteLuaEnabled": False,
    }  # fmt: skip
    if transfer_syntaxes is not None:
        config["AcceptedTransferSyntaxes"] = list(transfer_syntaxes)
    if lua:
        script = storage.parent / "filter.lua"
        script.write_text(lua)
        config["LuaScripts"] = [str(script)]
    return config


@contextmanager
def orthanc_server(workdir: Path | None = None, *, startup_seconds: float = 60.0, **options: Any) -> Iterator[Orthanc]:
    """A running Orthanc on free ports (options: see :func:`configuration`), stopped at the end."""
    if not Path(ORTHANC).exists() or not DICOMWEB_PLUGIN.exists():
        raise RuntimeError(MISSING)
    root = Path(workdir or tempfile.mkdtemp(prefix="ctdenoise-orthanc-"))
    storage = root / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
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


def stop(proc: subprocess.Popen, seconds: float = 20.0) -> None:
    """SIGTERM Orthanc's process group and wait for it (its storage folder may then be reused)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
