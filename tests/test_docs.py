"""The docs that list declarations are generated from them, and the README stays a front door."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_configuration_tables_are_the_declarations() -> None:
    """docs/configuration.md's parameter and settings tables are what the code declares."""
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "configuration_tables.py"), "--check"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_readme_is_a_front_door_whose_links_resolve() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 170
    assert "make demo" in text and "make test" in text
    for page in REPO.glob("docs/*.md"):
        assert f"docs/{page.name}" in text, f"README does not link {page.name}"
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith("http"):
            assert (REPO / target).exists(), target


def test_architecture_maps_every_module() -> None:
    """docs/architecture.md names every module of the package."""
    text = (REPO / "docs" / "architecture.md").read_text()
    package = REPO / "plugins" / "ctdenoise"
    modules = [p.relative_to(package).with_suffix("").as_posix() for p in package.rglob("*.py") if p.name != "__init__.py"]
    missing = [m for m in modules if f"`{m}.py`" not in text and f"`{m}`" not in text]
    assert not missing, f"docs/architecture.md does not map: {missing}"
