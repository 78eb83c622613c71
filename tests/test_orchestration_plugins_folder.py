"""Airflow's plugins loader must not import the package a second time under bare module names.

The plugins folder (``plugins/``) holds the installed ``ctdenoise`` package. Airflow imports every
``.py`` file below its plugins folder as a top-level module (``errors``, ``storage``,
``values``...) in every component, which would load numpy, pydicom and zarr twice and shadow
standard-library modules of the same name; ``plugins/.airflowignore`` keeps it out.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
from airflow._shared.plugins_manager.plugins_manager import _load_plugins_from_plugin_directory
before = set(sys.modules)
plugins, errors = _load_plugins_from_plugin_directory(sys.argv[1])
print(json.dumps({"plugins": len(plugins), "errors": errors, "new": sorted(set(sys.modules) - before)}))
"""


def test_the_plugins_loader_imports_nothing_of_the_package() -> None:
    import json

    done = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "plugins")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["errors"] == {} and result["plugins"] == 0
    assert not [m for m in result["new"] if not m.startswith(("airflow", "pathspec", "re2", "google_re2"))], result["new"]
