"""The embedded runtime's process handling: an interrupted ``airflow`` command leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import devenv


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


class _CtrlCWhileWaiting(subprocess.Popen):
    """A Popen whose first wait is interrupted by Ctrl-C after half a second (what the user sees
    as KeyboardInterrupt in the demo, while the command, in its own session, gets no SIGINT)."""

    interrupted = False

    def wait(self, timeout: float | None = None) -> int:
        if not _CtrlCWhileWaiting.interrupted:
            _CtrlCWhileWaiting.interrupted = True
            time.sleep(0.5)
            raise KeyboardInterrupt
        return super().wait(timeout)


@pytest.mark.parametrize("interruption", ["timeout", "ctrl-c"])
def test_an_interrupted_airflow_command_stops_its_whole_process_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interruption: str
) -> None:
    """``airflow dags test`` runs in its own session and starts a Spark JVM and workers: on a
    timeout or a KeyboardInterrupt the demo must stop all of them before the error goes on."""
    pidfile = tmp_path / "grandchild.pid"
    fake = tmp_path / "airflow"  # what _airflow runs: the airflow script beside sys.executable
    fake.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {pidfile}\nwait\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    expected: type[BaseException] = subprocess.TimeoutExpired
    if interruption == "ctrl-c":
        _CtrlCWhileWaiting.interrupted = False
        monkeypatch.setattr(devenv.subprocess, "Popen", _CtrlCWhileWaiting)
        expected = KeyboardInterrupt
    started = time.monotonic()
    with pytest.raises(expected):
        devenv._airflow(["dags", "test"], {"PATH": "/usr/bin:/bin"}, tmp_path / "log", timeout=1.0)
    assert time.monotonic() - started < 15
    grandchild = int(pidfile.read_text())
    for _ in range(50):
        if not _alive(grandchild):
            break
        time.sleep(0.1)
    assert not _alive(grandchild), "the airflow command's child outlived the interruption"
    assert "$ airflow dags test" in (tmp_path / "log").read_text()
