"""The Dockerfiles, checked without a Docker engine: what they copy exists, what they run resolves.

Each Dockerfile is parsed (continuations, ARG defaults, stages); every ``COPY`` source must exist
in the repository and be let through by the Dockerfile's own ``.dockerignore``; entry points must
name a console script or file that the image really contains; versions must agree with the
tested resolution (requirements.txt) and with what the DAG's manifests expect.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
DOCKERFILES = ("Dockerfile.worker", "Dockerfile.spark", "Dockerfile.airflow")


@dataclass
class Copy:
    sources: list[str]
    dest: str
    stage: str | None  # --from=<stage>


@dataclass
class Dockerfile:
    args: dict[str, str] = field(default_factory=dict)
    stages: list[tuple[str, str | None]] = field(default_factory=list)  # (image, alias)
    copies: list[Copy] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    entrypoint: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def parse_dockerfile(path: Path) -> Dockerfile:
    lines: list[str] = []
    buffer = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        lines.append(buffer + stripped)
        buffer = ""
    out = Dockerfile()
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG":
            name, _, default = rest.partition("=")
            if default or name not in out.args:
                out.args[name.strip()] = _expand(default.strip(), out.args)
        elif instruction == "FROM":
            parts = _expand(rest, out.args).split()
            out.stages.append((parts[0], parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None))
        elif instruction == "COPY":
            words = shlex.split(rest)
            stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
            words = [w for w in words if not w.startswith("--")]
            out.copies.append(Copy(sources=words[:-1], dest=words[-1], stage=stage))
        elif instruction == "USER":
            out.users.append(rest.strip())
        elif instruction == "ENTRYPOINT":
            out.entrypoint = json.loads(rest)
        elif instruction == "RUN":
            out.runs.append(_expand(rest, out.args))
        elif instruction == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", rest):
                out.env[key] = value
    return out


def pins() -> dict[str, str]:
    """``{normalized name: version}`` of requirements.txt."""
    out = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            out[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    return out


def _matches(path: str, pattern: str) -> bool:
    """Docker's pattern matching, for the forms our ignore files use (``*``, ``dir/**``, ``**/name``)."""
    if pattern.startswith("**/"):
        parts = path.split("/")
        return any(_matches("/".join(parts[i:]), pattern[3:]) for i in range(len(parts)))
    if pattern.endswith("/**"):
        return path.startswith(pattern[:-2])
    return fnmatch.fnmatchcase(path, pattern) or any(
        fnmatch.fnmatchcase("/".join(path.split("/")[: i + 1]), pattern) for i in range(path.count("/"))
    )


def ignored(path: str, dockerignore: Path) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes."""
    result = False
    for line in dockerignore.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            if _matches(path, line.lstrip("!").rstrip("/")):
                result = not negate
    return result


@pytest.fixture(scope="module", params=DOCKERFILES)
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, Dockerfile]:
    return request.param, parse_dockerfile(IMAGES / request.param)


def test_every_copied_file_exists_and_is_in_the_build_context(dockerfile: tuple[str, Dockerfile]) -> None:
    name, df = dockerfile
    dockerignore = IMAGES / f"{name}.dockerignore"
    assert dockerignore.is_file(), f"{name}: no {dockerignore.name} (the build context would hold .venv)"
    local = [c for c in df.copies if c.stage is None]
    assert local, name
    for copy in local:
        for source in copy.sources:
            matches = list(REPO.glob(source))
            assert matches, f"{name}: COPY source {source} does not exist"
            for match in matches:
                files = [match] if match.is_file() else [p for p in match.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
                for f in files:
                    rel = f.relative_to(REPO).as_posix()
                    assert not ignored(rel, dockerignore), f"{name}: {rel} is copied but excluded by {dockerignore.name}"


def test_copy_from_names_a_stage(dockerfile: tuple[str, Dockerfile]) -> None:
    name, df = dockerfile
    aliases = {alias for _, alias in df.stages if alias}
    for copy in df.copies:
        if copy.stage is not None:
            assert copy.stage in aliases, f"{name}: COPY --from={copy.stage} names no stage"


def test_requirement_files_are_pinned_by_the_tested_resolution() -> None:
    pinned = pins()
    for req in IMAGES.glob("*-requirements.in"):
        names = [line.split("#")[0].strip() for line in req.read_text().splitlines()]
        for n in filter(None, names):
            assert re.sub(r"[-_.]+", "-", n.lower()) in pinned, f"{req.name}: {n} is not pinned in requirements.txt"


DECODING_IMAGES = ("worker", "airflow")
"""The images that run ``ctdenoise convert``: the pods, and the local runtime's Airflow tasks."""


def requirement_names(image: str) -> set[str]:
    lines = (IMAGES / f"{image}-requirements.in").read_text().splitlines()
    return {re.sub(r"[-_.]+", "-", line.split("#")[0].strip().lower()) for line in lines} - {""}


@pytest.mark.parametrize("image", DECODING_IMAGES)
def test_images_that_convert_install_every_declared_decoder(image: str) -> None:
    """ctdenoise.transfer_syntaxes declares the decoders; each converting image installs them and
    its build fails (``ctdenoise decoders``) if one is unavailable."""
    from ctdenoise.transfer_syntaxes import distributions

    missing = distributions() - requirement_names(image)
    assert not missing, f"images/{image}-requirements.in lacks {sorted(missing)} (see ctdenoise.transfer_syntaxes)"
    df = parse_dockerfile(IMAGES / f"Dockerfile.{image}")
    assert any("ctdenoise decoders" in run for run in df.runs), f"Dockerfile.{image} does not check its decoders"


def test_images_install_what_the_package_imports_at_the_top() -> None:
    """pyproject's direct dependencies (the models are pydantic) are in every image that installs the package."""
    for image in ("worker", "spark"):
        assert {"numpy", "pydantic", "zarr", "s3fs"} <= requirement_names(image), image


def test_airflow_image_holds_the_package_the_dag_and_the_job() -> None:
    """Nothing is mounted over them: the Airflow side runs the ctdenoise built with the Spark image."""
    from ctdenoise.orchestration.config import load_settings

    df = parse_dockerfile(IMAGES / "Dockerfile.airflow")
    copies = {c.dest: c.sources for c in df.copies if c.stage is None}
    assert copies["/opt/ctdenoise/plugins/ctdenoise"] == ["plugins/ctdenoise"]
    assert copies["/opt/airflow/dags/ct_denoise.py"] == ["dags/ct_denoise.py"]
    application = load_settings({}).with_application(Path("/opt/airflow/dags")).spark_application
    assert copies[application] == ["spark/dssvd.py"]
    assert any("pip install" in run and "--no-deps /opt/ctdenoise" in run for run in df.runs)


def test_default_images_carry_a_registry_and_the_package_version() -> None:
    from ctdenoise import __version__
    from ctdenoise.orchestration.config import load_settings

    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"] == __version__
    settings = load_settings({})
    for kind in ("worker", "spark"):
        image = settings.image(kind)
        registry = image.split("/")[0]
        assert "." in registry or ":" in registry, f"{image}: no registry host (an implicit docker.io)"
        assert image.endswith(f"/ctdenoise-{kind}:{__version__}") and settings.pull_policy(image) == "IfNotPresent"


def test_worker_runs_the_ctdenoise_console_script_as_the_pods_user() -> None:
    from ctdenoise.orchestration import pods

    df = parse_dockerfile(IMAGES / "Dockerfile.worker")
    assert df.stages[-1][0].startswith("python:3.11")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert df.entrypoint == ["ctdenoise"] and "ctdenoise" in scripts
    module, _, func = scripts["ctdenoise"].partition(":")
    assert callable(getattr(__import__(module, fromlist=[func]), func))
    assert df.users[-1] == f"{pods.RUN_AS}:{pods.RUN_AS}"
    copied = {c.sources[0] for c in df.copies if c.stage is None}
    assert "plugins/ctdenoise" in copied
    # The pods' command: a module of the copied package that runs without Airflow (absent there).
    assert pods.PODRUN[:2] == ["python", "-m"]
    assert (REPO / "plugins" / (pods.PODRUN[2].replace(".", "/") + ".py")).is_file()


def test_pod_entry_point_imports_no_airflow() -> None:
    code = (
        "import sys, ctdenoise.orchestration.podrun, ctdenoise.records, ctdenoise.job, ctdenoise.plan, ctdenoise.cli;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('airflow', 'kubernetes', 'pyspark')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_spark_image_holds_the_application_the_manifest_runs() -> None:
    from ctdenoise.orchestration import sparkapp

    df = parse_dockerfile(IMAGES / "Dockerfile.spark")
    main = sparkapp.MAIN_APPLICATION_FILE
    assert main.startswith("local://")
    copies = {c.dest: c for c in df.copies}
    assert main[len("local://") :] in copies, f"{main} is not a COPY destination"
    assert copies[main[len("local://") :]].sources == ["spark/dssvd.py"]
    assert df.entrypoint == ["/opt/entrypoint.sh"] and copies["/opt/entrypoint.sh"].stage == "spark"
    assert df.users[-1] == f"{sparkapp.RUN_AS}:{sparkapp.RUN_AS}"
    version = df.args["SPARK_VERSION"]
    assert version == pins()["pyspark"] == sparkapp.SPARK_VERSION
    assert df.stages[0][0] == f"apache/spark:{version}-scala2.13-java17-ubuntu"
    assert df.stages[-1][0].startswith("python:3.11"), "driver and executors need the Airflow side's Python minor"


def test_airflow_image_matches_the_tested_airflow() -> None:
    df = parse_dockerfile(IMAGES / "Dockerfile.airflow")
    assert df.args["AIRFLOW_VERSION"] == pins()["apache-airflow"]
    assert df.stages[0][0] == f"apache/airflow:{pins()['apache-airflow']}-python3.11"
