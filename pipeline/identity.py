"""A run's identity: everything that decides its outputs, and the fingerprint that names it.

    run = resolve_identity(cfg, extension, cluster.gpus)
    run.fingerprint    # in the run record, every commit record and every ledger row
    run.spec           # the model recipe the actors load, with the device and dtype decided here

The driver resolves it once, before anything is written; `--dry-run` of every job on the plan calls the
same function with the same extension, to tell whether an output would resume or be refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

from mgie.config import check_detail_reference, check_strength
from pipeline.config import RESOURCE_PRESETS, EditConfig, SamplingSettings
from pipeline.editors import ModelSpec
from pipeline.outputs import OutputSettings
from pipeline.settings import identity_of, omitted_defaults
from pipeline.sources import SourceOptions

# Bump when the pipeline starts producing different outputs for the same inputs and settings.
OUTPUT_FORMAT = "mgie-batch-edit/2"  # 2: working size by --resize (fit default), full-size outputs, formats


@dataclass(frozen=True)
class RunIdentity:
    spec: ModelSpec  # cfg.model with the resolved device and dtype: what the actors load
    model: dict[str, Any]  # ModelSpec.describe(): kind, name, fingerprint, config
    sampler: SamplerSettings
    run_seed: int
    precision: dict[str, str] | None  # {"device", "dtype"}; None for the noop model
    identity: dict[str, Any]
    fingerprint: str


def resolve_identity(cfg: EditConfig, extension: Any, cluster_gpus: Callable[[], float]) -> RunIdentity:
    """The run's identity. `extension`: None, or the `pipeline.plan.RunExtension` of another job on this plan
    (eval, make-dataset, the summarizer pass), whose `identity` joins it (typed Any: plan imports this
    module). `cluster_gpus` is asked only when the precision check needs the cluster's GPU count."""
    from pipeline.clip_qa import check_clip

    model = cfg.model.describe()
    qa = cfg.qa_for_actors()
    qa_clip = check_clip(qa.clip, qa.storage_options) if qa.clip else None  # loads, before any work
    sampler, run_seed = resolve_sampler(cfg.sampling, model["config"])
    precision = resolve_precision(cfg.model, model["kind"], cfg.compute.resources, cluster_gpus)
    spec = cfg.model if precision is None else dataclasses.replace(cfg.model, **precision)  # actors use these
    extra = extension.identity if extension is not None else {}
    identity = {**run_identity(cfg, model, sampler, run_seed, precision, qa_clip), **extra}
    return RunIdentity(spec, model, sampler, run_seed, precision, identity, fingerprint_of(identity))


@dataclass(frozen=True)
class SamplerSettings:
    """What every row is edited with; written into each output sample's JSON."""

    num_inference_steps: int
    guidance_scale: float
    image_guidance_scale: float
    resolution: int
    rng: str = "cpu"  # "cpu": one CPU generator per row (portable); "reference": on the device, as the demo
    strength: float = 1.0  # 1: from pure noise (the reference); below: from the noised input latent
    detail_reference: str = "input"  # input | reconstruction: what a full-size output's detail is taken against

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        # the reference's sampling and today's detail: runs made before these settings keep their identity
        for name, default in (("strength", 1.0), ("detail_reference", "input")):
            if data[name] == default:
                del data[name]
        return data


def resolve_sampler(cfg: SamplingSettings, model_config: dict[str, Any]) -> tuple[SamplerSettings, int]:
    """The run's sampling settings over the model's own (`model_config["sampler"]`) -> (sampler, run seed)."""
    s = model_config["sampler"]
    settings = SamplerSettings(
        num_inference_steps=int(cfg.steps if cfg.steps is not None else s["num_inference_steps"]),
        guidance_scale=float(cfg.guidance_scale if cfg.guidance_scale is not None else s["guidance_scale"]),
        image_guidance_scale=float(
            cfg.image_guidance_scale if cfg.image_guidance_scale is not None else s["image_guidance_scale"]
        ),
        resolution=int(cfg.resolution if cfg.resolution is not None else s["resolution"]),
        rng=cfg.rng or s.get("rng", "cpu"),
        strength=check_strength(cfg.strength if cfg.strength is not None else s.get("strength", 1.0)),
        detail_reference=check_detail_reference(cfg.detail_reference or s.get("detail_reference", "input")),
    )
    seed = int(cfg.seed if cfg.seed is not None else s["seed"])
    return settings, seed


def resolve_precision(
    model: Any, kind: str, resources: str, cluster_gpus: Callable[[], float]
) -> dict[str, str] | None:
    """The device and dtype the model actors will run with, decided here once for the whole run: both change
    output bytes (fp16 vs fp32 numerics, CUDA vs CPU kernels), so they join the run fingerprint and no resume
    may silently switch them. `auto` device = cuda when the stages get GPUs (the `--resources` preset; with
    `auto`, whether the cluster has any: `cluster_gpus()` is only called then); `auto` dtype = float16 on
    cuda, float32 on cpu. None for the `noop` model, which has no numerics."""
    if kind == "noop":
        return None
    device = model.device
    if device.startswith("cuda") and resources in RESOURCE_PRESETS and RESOURCE_PRESETS[resources].edit.num_gpus == 0:
        raise ValueError(
            f"--device {device} with --resources {resources}: that preset gives the model stages no "
            f"GPU; pick a GPU preset, or --device cpu"
        )
    if device.startswith("cuda") and resources not in RESOURCE_PRESETS and cluster_gpus() < 1:
        raise ValueError(f"--device {device}: the Ray cluster has no GPU; use --device auto or cpu")
    from mgie.devices import dtype_name, resolve_device, resolve_dtype

    gpu = None  # whether the stages get GPUs: asked only for an `auto` device
    if device == "auto":
        gpu = RESOURCE_PRESETS[resources].edit.num_gpus > 0 if resources in RESOURCE_PRESETS else cluster_gpus() >= 1
    device = resolve_device(device, gpu).type  # the ordinal does not change the bytes
    return {"device": device, "dtype": dtype_name(resolve_dtype(model.dtype, device))}


def run_identity(
    cfg: EditConfig,
    model: dict[str, Any],
    sampler: SamplerSettings,
    run_seed: int,
    precision: dict[str, str] | None = None,
    qa_clip: str | None = None,
) -> dict[str, Any]:
    """Everything that decides the outputs; its hash is the run fingerprint. The groups' own entries are
    derived from their declarations (pipeline.settings.identity_of); `qa_clip`: the fingerprint of the
    --qa-clip model (pipeline.clip_qa.check_clip)."""
    identity = {
        "precision": precision,
        "output_format": OUTPUT_FORMAT,
        # the seed of a preset's random weights, beside their hash, so a change reads "model.seed: 0 -> 1"
        "model": {
            "fingerprint": model["fingerprint"],
            "name": model["name"],
            **({"seed": cfg.model.seed} if model.get("kind") == "preset" else {}),
        },
        "sampler": sampler.to_dict(),
        "run_seed": run_seed,
        "prompt": model["config"]["prompt"],
        "generation": model["config"]["generation"],
        **identity_of(cfg.sampling),
        "outputs": {**identity_of(cfg.outputs), **cfg.qa.identity(qa_clip)},
    }
    if cfg.model.scheduler:  # another scheduler is another sampler; unset, older runs keep their fingerprint
        identity["scheduler"] = cfg.model.scheduler
    if cfg.source.identity() != SourceOptions().identity():
        # explicit manifest columns decide which image and instruction a row gets; left out when unset so
        # that runs from before these options keep their fingerprint
        identity["source"] = cfg.source.identity()
    return identity


def fingerprint_of(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


# identity keys left out when they have their default (older runs keep their fingerprint); a difference
# names the default instead of None
IDENTITY_DEFAULTS = omitted_defaults(OutputSettings, "outputs")


def identity_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two run identities: ["sampler.num_inference_steps: 4 -> 8"]."""
    out: list[str] = []
    for k in sorted(set(old) | set(new)):
        default = IDENTITY_DEFAULTS.get(f"{prefix}{k}")
        a, b = old.get(k, default), new.get(k, default)
        if isinstance(a, dict) and isinstance(b, dict):
            out += identity_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out
