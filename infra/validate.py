"""Offline checks of the deployment files, run by tests/test_infra.py and by hand before a deploy:

    python -m infra.validate --schema-dir ../shared/schemas/kuberay      # or KUBERAY_SCHEMA_DIR=...

- KubeRay custom resources against the OpenAPI v3 schema of their CustomResourceDefinition, strictly:
  an unknown field is an error (as `kubectl apply --validate=strict` makes it), not silently pruned.
- The operator's own admission rules the schema cannot say (names, replica bounds, unique groups).
- This project's rules for its clusters (one image everywhere, Ray version of the image, GPU group).
- The cluster-launcher YAML against Ray's ray-schema.json after Ray's own default filling, and each
  node_config against the EC2 RunInstances request shape that botocore ships.
Every function returns a list of problems (strings naming the file and the field); empty means valid.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
GPU_RESOURCE = "nvidia.com/gpu"
# Read by the SDKs in every pod: the driver on the head writes commits, workers read and write shards.
STORAGE_ENV = ("AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
# KubeRay's limits (ray-operator/controllers/ray/utils/validation.go): the names become pod and service
# names with suffixes, hence shorter than the 63 of a DNS-1035 label.
MAX_NAME = {"RayCluster": 63, "RayJob": 47}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


# ---------------------------------------------------------------------------------------------- KubeRay


def _strict(schema: Any) -> Any:
    """A copy of a structural CRD schema in which objects reject unknown fields.

    The API server prunes unknown fields of a structural schema instead of failing; strict field
    validation turns them into errors. The same here: every object schema with `properties` and no
    `additionalProperties` / `x-kubernetes-preserve-unknown-fields` gets `additionalProperties: false`.
    """
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def crd_validator(kind: str, api_version: str, schema_dir: str):
    """jsonschema validator for one kind at one served version of the CRD in schema_dir."""
    import jsonschema

    path = Path(schema_dir) / CRD_FILES[kind]
    crd = yaml.safe_load(path.read_text())
    group = crd["spec"]["group"]
    for version in crd["spec"]["versions"]:
        if f"{group}/{version['name']}" == api_version:
            if not version.get("served", False):
                raise ValueError(f"{path.name}: {api_version} is not served")
            schema = _strict(version["schema"]["openAPIV3Schema"])
            jsonschema.Draft202012Validator.check_schema(schema)
            return jsonschema.Draft202012Validator(schema)
    served = [f"{group}/{v['name']}" for v in crd["spec"]["versions"]]
    raise ValueError(f"{path.name}: no version {api_version!r} (has {served})")


def _where(error) -> str:
    return "/".join(str(p) for p in error.absolute_path) or "(root)"


def schema_problems(doc: dict, schema_dir: str | os.PathLike, source: str = "manifest") -> list[str]:
    """Problems of one KubeRay object against its CRD schema."""
    kind = doc.get("kind")
    if kind not in CRD_FILES:
        return [f"{source}: kind {kind!r} is not a KubeRay kind ({sorted(CRD_FILES)})"]
    validator = crd_validator(kind, doc.get("apiVersion", ""), str(schema_dir))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{source}: {kind} {_where(e)}: {e.message}" for e in errors]


def _quantity(value: Any) -> float:
    """A Kubernetes resource quantity as a number ("500m" -> 0.5, "16Gi" -> 16 * 2**30)."""
    binary = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
    decimal = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([KMGTPE]i|[numkMGTPE]?)", str(value))
    if not m:
        raise ValueError(f"not a resource quantity: {value!r}")
    number, suffix = m.groups()
    return float(number) * (binary.get(suffix) or decimal[suffix])


def _cluster_spec(doc: dict) -> dict | None:
    spec = doc.get("spec") or {}
    return spec if doc.get("kind") == "RayCluster" else spec.get("rayClusterSpec")


def _groups(cluster: dict):
    """(name, group spec, pod spec) of the head group and then each worker group."""
    head = cluster.get("headGroupSpec") or {}
    yield "head", head, (head.get("template") or {}).get("spec") or {}
    for group in cluster.get("workerGroupSpecs") or []:
        yield group.get("groupName", "?"), group, (group.get("template") or {}).get("spec") or {}


def operator_problems(doc: dict, source: str = "manifest") -> list[str]:
    """Rules KubeRay's controller enforces beyond the schema (the subset these manifests touch)."""
    kind, problems = doc.get("kind"), []
    name = (doc.get("metadata") or {}).get("name", "")
    if not DNS1035.match(name) or len(name) > MAX_NAME.get(kind, 63):
        problems.append(
            f"{source}: metadata.name {name!r} must be a DNS-1035 label of at most "
            f"{MAX_NAME.get(kind, 63)} characters for a {kind}"
        )
    if kind == "RayJob":
        spec = doc.get("spec") or {}
        if spec.get("rayClusterSpec") and spec.get("clusterSelector"):
            problems.append(f"{source}: RayJob spec has both rayClusterSpec and clusterSelector")
        if not spec.get("rayClusterSpec") and not spec.get("clusterSelector"):
            problems.append(f"{source}: RayJob spec needs rayClusterSpec or clusterSelector")
        if spec.get("shutdownAfterJobFinishes") and spec.get("clusterSelector"):
            problems.append(
                f"{source}: shutdownAfterJobFinishes with clusterSelector would not delete "
                "a cluster the job did not create"
            )
        if not str(spec.get("entrypoint", "")).strip():
            problems.append(f"{source}: RayJob spec.entrypoint is empty")
    cluster = _cluster_spec(doc)
    if not cluster:
        return problems
    seen: set[str] = set()
    for gname, group, pod in _groups(cluster):
        where = f"{source}: group {gname}"
        if gname != "head":
            if gname in seen:
                problems.append(f"{where}: groupName is not unique")
            seen.add(gname)
            lo, hi = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
            n = group.get("replicas", lo)
            if not all(isinstance(x, int) for x in (lo, hi, n)):
                pass  # a wrong type is the schema's finding
            elif lo > hi:
                problems.append(f"{where}: minReplicas {lo} > maxReplicas {hi}")
            elif not lo <= n <= hi:
                problems.append(f"{where}: replicas {n} outside [{lo}, {hi}]")
        if not pod.get("containers"):
            problems.append(f"{where}: the pod template has no containers")
        for c in pod.get("containers") or []:
            res = c.get("resources") or {}
            for rname, req in (res.get("requests") or {}).items():
                lim = (res.get("limits") or {}).get(rname)
                try:
                    over = lim is not None and _quantity(req) > _quantity(lim)
                except ValueError:
                    continue  # not a quantity: the schema's pattern reports it
                if over:
                    problems.append(f"{where}: container {c.get('name')} requests {rname}={req} above its limit {lim}")
    return problems


def project_problems(doc: dict, ray_version: str, source: str = "manifest") -> list[str]:
    """This project's rules: one image, the image's Ray, a GPU group, storage env in every pod."""
    cluster, problems = _cluster_spec(doc), []
    if not cluster:
        return [f"{source}: no cluster spec"]
    if cluster.get("rayVersion") != ray_version:
        problems.append(
            f"{source}: rayVersion {cluster.get('rayVersion')!r} is not the image's ray "
            f"{ray_version!r} (infra/constraints.txt)"
        )
    images, gpu_groups = set(), []
    for gname, _group, pod in _groups(cluster):
        for c in pod.get("containers") or []:
            images.add(c.get("image"))
            env = {e.get("name") for e in c.get("env") or []}
            missing = [v for v in STORAGE_ENV if v not in env]
            if missing:
                problems.append(f"{source}: group {gname} container {c.get('name')} lacks env {missing}")
            if GPU_RESOURCE in ((c.get("resources") or {}).get("limits") or {}):
                gpu_groups.append(gname)
        if pod.get("serviceAccountName") != "mgie-batch":
            problems.append(f"{source}: group {gname} does not run as service account mgie-batch")
    head_cpus = ((cluster.get("headGroupSpec") or {}).get("rayStartParams") or {}).get("num-cpus")
    if head_cpus != "0":
        problems.append(
            f"{source}: the head's rayStartParams num-cpus is {head_cpus!r}; '0' keeps the stages off the head"
        )
    if len(images) != 1:
        problems.append(f"{source}: head and workers must share one image, found {sorted(map(str, images))}")
    if not any(g != "head" for g in gpu_groups):
        problems.append(f"{source}: no worker group requests {GPU_RESOURCE}")
    for gname, group, _ in _groups(cluster):
        if gname in gpu_groups and gname != "head" and group.get("minReplicas", 0) < 1:
            # `--resources auto` counts the GPUs up at job start; none up means the CPU layout
            problems.append(
                f"{source}: GPU group {gname} has minReplicas {group.get('minReplicas', 0)}; a job "
                "would start without GPUs and pick the CPU resources (keep at least 1)"
            )
    if "head" in gpu_groups:
        problems.append(f"{source}: the head requests {GPU_RESOURCE}; it should be a CPU node")
    return problems


def k8s_manifests() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def validate_k8s(schema_dir: str | os.PathLike, ray_version: str) -> list[str]:
    """All problems of every object under infra/k8s/."""
    problems = []
    for path in k8s_manifests():
        for doc in load_all(path):
            src = f"{path.relative_to(ROOT)}"
            if doc.get("apiVersion", "").startswith("ray.io/"):
                problems += schema_problems(doc, schema_dir, src)
                problems += operator_problems(doc, src)
                problems += project_problems(doc, ray_version, src)
            elif doc.get("apiVersion") == "v1" and doc.get("kind") in ("Secret", "ServiceAccount"):
                if not DNS1035.match((doc.get("metadata") or {}).get("name", "")):
                    problems.append(f"{src}: {doc['kind']} needs a metadata.name")
            else:
                problems.append(f"{src}: unexpected object {doc.get('apiVersion')}/{doc.get('kind')}")
    return problems


# ---------------------------------------------------------------------------------- cluster launcher


def launcher_problems(config: dict, source: str = "ray-cluster.yaml") -> list[str]:
    """The launcher config as `ray up` checks it, plus EC2 request shapes for AWS node types."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        # what `ray up` does before it contacts the cloud: fill defaults, then check the schema
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except jsonschema.ValidationError as e:
        return [f"{source}: {_where(e)}: {e.message}"]
    except (ValueError, KeyError, RuntimeError) as e:
        return [f"{source}: {type(e).__name__}: {e}"]
    problems = []
    gpu_types = {k: t for k, t in prepared["available_node_types"].items() if t["resources"].get("GPU", 0) > 0}
    if not any(t.get("min_workers", 0) >= 1 for t in gpu_types.values()):
        problems.append(
            f"{source}: no GPU node type has min_workers >= 1; `--resources auto` would find no GPU when the job starts"
        )
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        if prepared.get(key):
            problems.append(f"{source}: {key} would install on the hosts; the image holds everything")
    if prepared["provider"]["type"] == "aws":
        problems += ec2_problems(prepared, source)
    return problems


def ec2_problems(config: dict, source: str) -> list[str]:
    """Each AWS node_config against botocore's RunInstances input shape (the call the node provider makes)."""
    import botocore.session
    import botocore.validate

    shape = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    problems = []
    for name, node_type in config["available_node_types"].items():
        params = dict(node_type["node_config"], MinCount=1, MaxCount=1)  # the provider adds the counts
        report = botocore.validate.ParamValidator().validate(params, shape)
        if report.has_errors():
            problems.append(f"{source}: node type {name}: {report.generate_report()}")
    return problems


def ray_schema_path() -> Path:
    import ray.autoscaler

    return Path(ray.autoscaler.__file__).parent / "ray-schema.json"


def raw_launcher_problems(config: dict, source: str = "ray-cluster.yaml") -> list[str]:
    """The file as written (before defaults) against ray-schema.json."""
    import jsonschema

    schema = json.loads(ray_schema_path().read_text())
    v = jsonschema.Draft7Validator(schema)
    return [f"{source}: {_where(e)}: {e.message}" for e in v.iter_errors(config)]


# -------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    from infra.lock import read

    ap = argparse.ArgumentParser(description="Validate infra/ offline.")
    ap.add_argument(
        "--schema-dir",
        default=os.environ.get("KUBERAY_SCHEMA_DIR"),
        help="folder with the KubeRay CRD YAMLs (default: $KUBERAY_SCHEMA_DIR)",
    )
    args = ap.parse_args(argv)
    ray_version = read()["ray"]
    problems = []
    if args.schema_dir:
        problems += validate_k8s(args.schema_dir, ray_version)
    else:
        print("KubeRay manifests not checked: give --schema-dir or KUBERAY_SCHEMA_DIR", file=sys.stderr)
    launcher = yaml.safe_load((INFRA / "ray-cluster.yaml").read_text())
    problems += raw_launcher_problems(launcher) + launcher_problems(launcher)
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
