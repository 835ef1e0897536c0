"""Resolve infra/constraints.txt: exact versions of every runtime dependency of the container image.

The image (infra/Dockerfile) installs torch first (its version and build are Docker build args), then
every pin with `pip install -c constraints.txt -r constraints.txt "ray[default,data]"`, then the project
itself with `pip install --no-deps`. This script resolves the requirement set behind those pins once (the
project's dependencies and its `pipeline` extra, torch excluded, plus `ray[default,data]`), for the
image's interpreter and platform, with pip's own resolver in dry-run mode, and writes the pins. Torch and
its CUDA wheels are left out on purpose: the torch build pins those.

    python infra/lock.py                 # rewrite infra/constraints.txt (needs the package index)
    python infra/lock.py --check         # offline: constraints still satisfy pyproject.toml
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pyproject allows 3.10; the `test` extra installs tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "infra" / "constraints.txt"

# Left to the torch wheel chosen by the TORCH_BUILD build arg (it pins its own CUDA libraries).
TORCH_OWNED = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*|sympy|mpmath|networkx|setuptools)$")


@dataclass(frozen=True)
class Target:
    """The interpreter and platform of the image (python3 of the Ubuntu 24.04 base)."""

    python_version: str = "3.12"
    # glibc 2.39; pip does not widen a manylinux tag to older ones by itself, so all are listed
    platforms: tuple[str, ...] = tuple(
        f"manylinux_2_{minor}_x86_64" for minor in (39, 35, 34, 31, 28, 27, 24, 17, 12, 5)
    ) + ("manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64")
    ray_version: str = "2.60.0"
    # the Dockerfile's TORCH_VERSION default (CI's torch); packages that need torch resolve against it
    torch_version: str = "2.13.0"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_requirements(pyproject: Path = ROOT / "pyproject.toml", target: Target = Target()) -> list[str]:
    """The requirement lines the image installs, torch excluded."""
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = [r for r in project["dependencies"] if canonical(re.split(r"[ <>=!~;\[]", r, maxsplit=1)[0]) != "torch"]
    reqs += project["optional-dependencies"]["pipeline"]
    # the head runs the dashboard and the job-submission server: ray[default]
    reqs.append(f"ray[default,data]=={target.ray_version}")
    return reqs


def _torch_placeholder(folder: Path, version: str) -> Path:
    """A dependency-free wheel named torch, for the resolver only.

    The torch of the image comes from the TORCH_BUILD index, which pip does not see here; resolving the
    index's torch instead would drag in CUDA wheels of another build. The stand-in carries a local version
    (`+image`) that no index has, so pip can only pick it; it is dropped from the pins like torch itself.
    """
    import zipfile

    name = f"torch-{version}+image"
    wheel = folder / "wheels" / f"{name}-py3-none-any.whl"
    wheel.parent.mkdir(parents=True, exist_ok=True)
    info = f"{name}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}+image\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: infra.lock\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for n, text in files.items():
            z.writestr(n, text)
    return wheel.parent


def resolve(target: Target = Target()) -> dict[str, str]:
    """{name: version} that pip would install for `target`, via `pip install --dry-run --report`."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--quiet",
            "--ignore-installed",
            "--only-binary=:all:",
            "--python-version",
            target.python_version,
            *(f"--platform={p}" for p in target.platforms),
            "--implementation",
            "cp",
            "--target",
            str(Path(tmp) / "target"),  # pip wants one with platform options; dry run: unused
            "--report",
            str(report),
            *image_requirements(target=target),
            # packages that need torch resolve against a stand-in for the image's torch (see below)
            "--find-links",
            str(_torch_placeholder(Path(tmp), target.torch_version)),
            f"torch=={target.torch_version}+image",
        ]
        subprocess.run(cmd, check=True)
        installs = json.loads(report.read_text())["install"]
    pins = {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}
    return {n: v for n, v in sorted(pins.items()) if not TORCH_OWNED.match(n)}


def write(pins: dict[str, str], target: Target = Target(), path: Path = CONSTRAINTS) -> None:
    head = (
        "# Generated by `python infra/lock.py`; do not edit by hand.\n"
        f"# Resolved for CPython {target.python_version} on {target.platforms[0]}; torch and its CUDA wheels\n"
        "# come from the TORCH_BUILD build arg of infra/Dockerfile and are not pinned here.\n"
    )
    path.write_text(head + "".join(f"{n}=={v}\n" for n, v in pins.items()))


def read(path: Path = CONSTRAINTS) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonical(name)] = version
    return pins


def check(path: Path = CONSTRAINTS) -> list[str]:
    """Problems with the pins against pyproject.toml: a missing pin or a pin outside the declared range."""
    from packaging.requirements import Requirement

    pins = read(path)
    problems = []
    for line in image_requirements():
        req = Requirement(line)
        name = canonical(req.name)
        if name not in pins:
            problems.append(f"{path.name}: no pin for {req.name} (required as {line!r}); run `python infra/lock.py`")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(
                f"{path.name}: {name}=={pins[name]} is outside {line!r} of pyproject.toml; run `python infra/lock.py`"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check the existing pins (offline)")
    args = ap.parse_args(argv)
    if not args.check:
        write(resolve())
    problems = check()
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
