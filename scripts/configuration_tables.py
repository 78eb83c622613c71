"""Rewrite the two generated tables of docs/configuration.md from their declarations.

    .venv/bin/python scripts/configuration_tables.py          # rewrite the page
    .venv/bin/python scripts/configuration_tables.py --check  # exit 1 if the page is out of date

The run parameters come from ``ctdenoise.params.RunParams``, the environment from
``ctdenoise.orchestration.config.Settings``; each table follows its placeholder line and ends at
the first line that is not a table row. ``tests/test_docs.py`` runs the check.
"""

from __future__ import annotations

import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def tables() -> dict[str, str]:
    from ctdenoise import params
    from ctdenoise.orchestration import config

    return {"<!-- params-table -->": params.markdown_table(), "<!-- settings-table -->": config.markdown_table()}


def render(text: str) -> str:
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    i = 0
    generated = tables()
    while i < len(lines):
        out.append(lines[i])
        marker = lines[i].strip()
        i += 1
        if marker in generated:
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            out.append(generated[marker])
    return "".join(out)


def main(argv: list[str]) -> int:
    text = PAGE.read_text()
    fresh = render(text)
    if "--check" in argv:
        if fresh != text:
            print(f"{PAGE} is out of date: run .venv/bin/python scripts/configuration_tables.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
