"""Each image's Python environment, built the way its Dockerfile builds it, in a virtualenv.

There is no Docker engine on the development machines, so the images are checked by what they
must run: ``images/<image>-requirements.in`` installed with ``requirements.txt`` as constraints
into a fresh virtualenv (as ``RUN pip install -r ... -c requirements.txt`` does), then the package
installed non-editable from the files the Dockerfiles copy (``pyproject.toml``, ``README.md``,
``plugins/ctdenoise``). What the base image provides is added by name: Airflow itself (the
``apache/airflow`` base) and pyspark (the ``/opt/spark/python`` of the ``apache/spark`` base).

The dependency environments take minutes to build, so they are cached under
``.cache/image-envs/<image>-<hash of the inputs>`` (``CT_DENOISE_IMAGE_ENVS`` moves it) and
reused until requirements.txt or the image's requirement file changes; the package itself is
reinstalled on every use. ``python scripts/image_envs.py worker|spark|airflow`` builds one and
prints its folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE_FILES = ("pyproject.toml", "README.md", "plugins/ctdenoise")  # what the Dockerfiles COPY before `pip install`


@dataclass(frozen=True)
class ImageEnv:
    name: str
    base: tuple[str, ...] = ()  # what the image's base provides (pinned by requirements.txt)

    @property
    def requirements(self) -> Path:
        return REPO / "images" / f"{self.name}-requirements.in"


IMAGES = {
    "worker": ImageEnv("worker"),
    "spark": ImageEnv("spark", base=("pyspark",)),
    "airflow": ImageEnv("airflow", base=("apache-airflow",)),
}


def cache_root() -> Path:
    return Path(os.environ.get("CT_DENOISE_IMAGE_ENVS") or REPO / ".cache" / "image-envs")


def _key(image: ImageEnv) -> str:
    digest = hashlib.sha256()
    for path in (REPO / "requirements.txt", image.requirements):
        digest.update(path.read_bytes())
    digest.update(repr((image.base, sys.version_info[:2])).encode())
    return digest.hexdigest()[:12]


def _pip(env: Path, *args: str, timeout: float = 1800) -> None:
    done = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args[:3])} ... failed in {env}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def build(name: str) -> Path:
    """The cached dependency environment of image ``name`` (built on first use)."""
    image = IMAGES[name]
    env = cache_root() / f"{name}-{_key(image)}"
    if (env / ".complete").is_file():
        return env
    shutil.rmtree(env, ignore_errors=True)
    env.parent.mkdir(parents=True, exist_ok=True)
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(env)], check=True, timeout=300)
    _pip(env, "install", "-r", str(image.requirements), *image.base, "-c", str(REPO / "requirements.txt"))
    (env / ".complete").write_text(_key(image))
    return env


def install_package(env: Path) -> None:
    """Install ctdenoise into ``env`` non-editable, from a copy of what the Dockerfiles copy."""
    with tempfile.TemporaryDirectory(prefix="ctdenoise-src-") as tmp:
        for rel in PACKAGE_FILES:
            source, target = REPO / rel, Path(tmp) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, target)
        _pip(env, "install", "--no-deps", "--force-reinstall", tmp, timeout=600)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in IMAGES:
        print(f"usage: image_envs.py {'|'.join(IMAGES)}", file=sys.stderr)
        return 2
    env = build(argv[0])
    install_package(env)
    print(env)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
