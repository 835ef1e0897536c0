"""Typed configuration of an edit run: what to edit (`EditConfig`) and with what resources (`Resources`).

Only the settings that change the outputs go into the *run fingerprint* (`run_identity`): model identity,
sampler, prompt/generation settings, the run seed, a shared instruction, the unit size and the output
format version. Resources, limits and retries do not: the same run may resume on a different cluster.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

from mgie.config import check_detail_reference, check_strength
from pipeline.editors import ModelSpec
from pipeline.quarantine import QuarantineSettings
from pipeline.sources import SourceOptions

# Bump when the pipeline starts producing different outputs for the same inputs and settings.
OUTPUT_FORMAT = "mgie-batch-edit/2"  # 2: working size by --resize (fit default), full-size outputs, formats


@dataclass(frozen=True)
class StageResources:
    batch_size: int  # rows per model call (a unit is cut into fixed sub-batches: deterministic)
    actors: int  # actors in the pool
    num_gpus: float  # per actor; fractional GPUs share one device (a scheduling count, not a memory cap)
    num_cpus: float  # per actor; fractional on small machines so read tasks are never starved
    memory_gb: float = 1.0  # host memory per actor (weights pass through it while loading). Also keeps Ray
    # Data from fusing the CPU decode stage into the model actor: ops with different resources never fuse


@dataclass(frozen=True)
class Resources:
    """Ray resources of every stage. CPU stages are tasks; the two model stages are actor pools."""

    name: str
    express: StageResources
    edit: StageResources
    read_cpus: float = 0.25  # read + decode/validate tasks
    write_cpus: float = 0.25  # encode + write tasks
    torch_threads: int = 0  # intra-op threads per model actor; 0 = torch's default
    # "split": an express pool and an edit pool (fractional GPUs share a device); "fused": one actor per GPU
    # holding both parts, overlapping one unit's MLLM with the previous unit's diffusion (docs/performance.md)
    layout: str = "split"
    fused_override: tuple[int, float] | None = None  # (actors, GPUs per actor) from --concurrency/--num-gpus
    # a `*-per-gpu` preset describes one GPU and is multiplied by the GPUs up (`scaled`); a node preset such
    # as `8x-h100` names its GPUs itself and requests them whatever is up
    per_gpu: bool = False

    def fused(self) -> StageResources:
        """The fused layout's one pool: the split pools' GPUs regrouped as whole-GPU actors holding both
        parts (80gb-per-gpu: 1 x 0.34 + 2 x 0.33 -> 1 actor with 1 GPU), the split batch sizes kept."""
        e, d = self.express, self.edit
        if self.fused_override is not None:
            actors, gpus = self.fused_override
            return StageResources(
                batch_size=d.batch_size,
                actors=actors,
                num_gpus=gpus,
                num_cpus=max(e.num_cpus, d.num_cpus),
                memory_gb=e.memory_gb + d.memory_gb,
            )
        gpus = e.actors * e.num_gpus + d.actors * d.num_gpus
        actors = max(1, round(gpus)) if gpus else max(e.actors, d.actors)
        return StageResources(
            batch_size=d.batch_size,
            actors=actors,
            num_gpus=gpus / actors if gpus else 0,
            num_cpus=max(e.num_cpus, d.num_cpus),
            memory_gb=e.memory_gb + d.memory_gb,
        )

    def with_overrides(
        self,
        layout: str = "auto",
        batch_size: int | None = None,
        express_batch_size: int | None = None,
        concurrency: int | None = None,
        num_gpus: float | None = None,
    ) -> "Resources":
        """`--layout`, `--batch-size`, `--express-batch-size`, `--concurrency` (actors per model stage) and
        `--num-gpus` (per actor) over the preset. `auto` layout: fused when the model stages have GPUs
        (measured faster on one GPU, docs/performance.md), else split."""
        if layout not in LAYOUTS:
            raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if layout == "auto":
            gpus = num_gpus if num_gpus is not None else self.edit.num_gpus
            layout = "fused" if gpus > 0 else "split"

        def stage(s: StageResources, batch: int | None) -> StageResources:
            return dataclasses.replace(
                s,
                batch_size=batch or s.batch_size,
                actors=concurrency or s.actors,
                num_gpus=s.num_gpus if num_gpus is None else num_gpus,
            )

        out = dataclasses.replace(
            self, layout=layout, express=stage(self.express, express_batch_size), edit=stage(self.edit, batch_size)
        )
        if layout == "fused" and (concurrency or num_gpus is not None):
            # the fused pool is derived from the split pools' GPUs; pin it to what was asked instead
            out = dataclasses.replace(
                out,
                fused_override=(
                    concurrency or out.fused().actors,
                    out.fused().num_gpus if num_gpus is None else num_gpus,
                ),
            )
        return out

    def scaled(self, gpus: int) -> "Resources":
        """Actor counts of a per-GPU preset multiplied by the cluster's GPU count; any other preset as it is."""
        if gpus <= 1 or not self.per_gpu or self.express.num_gpus == 0:
            return self
        per_gpu = lambda s: dataclasses.replace(s, actors=max(1, round(s.actors * gpus)))  # noqa: E731
        return dataclasses.replace(self, express=per_gpu(self.express), edit=per_gpu(self.edit))


LAYOUTS = ("auto", "split", "fused")

# Per-GPU starting points from docs/deploy.md ("Sizing actors per GPU type"); `*-per-gpu` presets scale with
# the cluster's GPU count, `8x-h100` is laid out for one 8-GPU node.
RESOURCE_PRESETS: dict[str, Resources] = {
    # 2-core laptop/CI: everything fractional, one thread per actor so two actors do not fight for cores
    "cpu": Resources("cpu", StageResources(4, 1, 0, 0.25, 1), StageResources(4, 1, 0, 0.25, 1), 0.25, 0.25, 1),
    "24gb-per-gpu": Resources(
        "24gb-per-gpu", StageResources(8, 1, 0.5, 1, 16), StageResources(4, 1, 0.5, 1, 4), 1, 1, per_gpu=True
    ),
    "40gb-per-gpu": Resources(
        "40gb-per-gpu", StageResources(32, 1, 0.5, 1, 16), StageResources(8, 1, 0.5, 1, 4), 1, 1, per_gpu=True
    ),
    "80gb-per-gpu": Resources(
        "80gb-per-gpu", StageResources(64, 1, 0.34, 1, 16), StageResources(16, 2, 0.33, 1, 4), 1, 1, per_gpu=True
    ),
    # 2 express + 6 edit GPUs: one express GPU feeds ~1.6-2.5 edit GPUs at 20 steps, ~3-3.5 at 100 (measured
    # stage times, docs/deploy.md "Sizing actors per GPU type")
    "8x-h100": Resources("8x-h100", StageResources(64, 2, 1, 4, 16), StageResources(16, 6, 1, 4, 4), 1, 1),
}


def pick_resources(name: str, cluster_gpus: float) -> Resources:
    """`auto`: `cpu` without GPUs, else the 24 GB per-GPU layout (fits every common GPU) times the GPUs."""
    if name == "auto":
        name = "cpu" if cluster_gpus < 1 else "24gb-per-gpu"
    if name not in RESOURCE_PRESETS:
        raise ValueError(f"unknown resources preset {name!r}; known: auto, {', '.join(RESOURCE_PRESETS)}")
    return RESOURCE_PRESETS[name].scaled(int(cluster_gpus))


@dataclass(frozen=True)
class EditConfig:
    # shard pattern(s): braces, globs, folders, files, manifests, @list files (pipeline.inputs.input_patterns)
    input: str | tuple[str, ...]
    output: str  # output prefix
    model: ModelSpec = field(default_factory=ModelSpec)
    instruction: str | None = None  # one instruction for every row (catalogue retouching)
    steps: int | None = None  # diffusion steps (default: the model's sampler config)
    guidance_scale: float | None = None
    image_guidance_scale: float | None = None
    strength: float | None = None  # img2img strength in (0, 1]; 1 = from pure noise (default: the model's)
    detail_reference: str | None = None  # input | reconstruction (default: the model's)
    resolution: int | None = None  # working resolution (default: the model's)
    seed: int | None = None  # run seed; per-row seed = f(run seed, key) (default: the model's sampler seed)
    unit_rows: int = 64  # rows per unit of output (tar + ledger file + commit record)
    limit: int | None = None  # stop after about this many new rows (whole units), for trial runs
    retry_errors: bool = False  # reprocess the error rows of committed units, nothing else
    resources: str = "auto"
    endpoint_url: str | None = None  # S3 endpoint for s3:// URLs (default: $AWS_ENDPOINT_URL, else AWS)
    progress: bool = True
    rng: str | None = None  # noise generators: cpu | reference (default: the model's sampler config)
    layout: str = "auto"  # model actor layout (Resources.with_overrides); not part of the fingerprint
    batch_size: int | None = None  # rows per diffusion call (default: the resources preset's)
    express_batch_size: int | None = None  # rows per MLLM call (default: the resources preset's)
    lease_timeout_s: float = 300.0  # a driver's lease on the output goes stale this long after its last heartbeat
    source: SourceOptions = field(default_factory=SourceOptions)  # manifest columns, image fetching
    concurrency: int | None = None  # actors per model stage (default: the resources preset's)
    num_gpus: float | None = None  # GPUs per model actor (default: the resources preset's)
    # outputs (all part of the fingerprint): see pipeline.outputs and docs/pipeline.md "Outputs"
    resize: str = "fit"  # working image: fit (aspect kept) | crop (centre square) | reference (raw, floored to 8)
    max_pixels: int = 1024 * 1024  # --resize reference: larger working images become error rows
    max_output_pixels: int = 0  # --output-size original: larger photos become error rows, before decoding; 0 = off
    output_size: str = "original"  # original (the input's size and orientation) | work (the working size)
    image_format: str | None = None  # jpg | png | webp; None: the input's family
    quality: int = 95  # JPEG / WebP
    strip_metadata: bool = False  # drop EXIF from the outputs (ICC profiles stay)
    copy_input: bool = False  # also write `<key>.input.<ext>`, the input as the output shows it
    qa_min_change: float | None = None  # auto-QA bounds on the mean change (8-bit levels): qa_pass column
    qa_max_change: float | None = None
    output_format: str = "webdataset"  # the unit files (pipeline/writers): webdataset tars + ledger | parquet
    qa_clip: str | None = None  # CLIP folder (local or fsspec) for qa_clip_t / qa_clip_dir; never downloaded
    qa_min_clip_dir: float | None = None  # auto-QA bound on the CLIP directional similarity (needs qa_clip)
    # rows that kill or hang their workers (pipeline/quarantine.py); not part of the fingerprint
    quarantine: QuarantineSettings = field(default_factory=QuarantineSettings)

    def outputs(self):
        """The output settings the write stage renders with (checked when made)."""
        from pipeline.outputs import OutputSettings

        return OutputSettings(
            resize=self.resize,
            output_size=self.output_size,
            image_format=self.image_format,
            quality=self.quality,
            strip_metadata=self.strip_metadata,
            qa_min_change=self.qa_min_change,
            qa_max_change=self.qa_max_change,
            qa_min_clip_dir=self.qa_min_clip_dir,
        )

    def qa(self):
        """What the edit actors check each edit with (pipeline.quality)."""
        from pipeline.quality import QASettings
        from pipeline.storage import storage_options_for

        return QASettings(self.qa_clip, storage_options_for(self.qa_clip, self.endpoint_url) if self.qa_clip else {})

    def __post_init__(self):
        if self.unit_rows < 1:
            raise ValueError(f"unit_rows must be >= 1, got {self.unit_rows}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.instruction is not None and not self.instruction.strip():
            raise ValueError("--instruction is empty")
        if self.rng not in (None, "cpu", "reference"):
            raise ValueError(f"--rng must be 'cpu' or 'reference', got {self.rng!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        from pipeline.outputs import RESIZE_MODES

        if self.resize not in RESIZE_MODES:
            raise ValueError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.max_pixels < 64:
            raise ValueError(f"--max-pixels must be >= 64 (one 8 x 8 image), got {self.max_pixels}")
        if self.max_output_pixels < 0:
            raise ValueError(f"--max-output-pixels must be >= 0 (0 = no limit), got {self.max_output_pixels}")
        self.outputs()  # raises on a bad --output-size / --image-format / --quality / QA bound
        if self.qa_min_clip_dir is not None and not self.qa_clip:
            raise ValueError("--qa-min-clip-dir needs --qa-clip PATH, the CLIP model that measures it")
        from pipeline.writers import OUTPUT_FORMATS

        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.output_format!r}")
        for flag, value in (("--batch-size", self.batch_size), ("--express-batch-size", self.express_batch_size)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise ValueError(
                f"--resolution must be a positive multiple of 8 (the VAE works on 8x8 pixel blocks), "
                f"got {self.resolution}"
            )
        if self.lease_timeout_s <= 0:
            raise ValueError(f"--lease-timeout must be > 0 seconds, got {self.lease_timeout_s}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.num_gpus is not None and self.num_gpus < 0:
            raise ValueError(f"--num-gpus must be >= 0, got {self.num_gpus}")


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


def resolve_sampler(cfg: EditConfig, model_config: dict[str, Any]) -> tuple[SamplerSettings, int]:
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
    """Everything that decides the outputs; its hash is the run fingerprint. `qa_clip`: the fingerprint of
    the --qa-clip model (pipeline.clip_qa.check_clip), which decides the qa_clip_* columns; its path does not
    (the same weights elsewhere are the same run, changed weights at the same path are not)."""
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
        "instruction": cfg.instruction,
        "unit_rows": cfg.unit_rows,
        "outputs": {
            "resize": cfg.resize,
            "max_pixels": cfg.max_pixels,
            "output_size": cfg.output_size,
            "image_format": cfg.image_format,
            "quality": cfg.quality,
            "strip_metadata": cfg.strip_metadata,
            "copy_input": cfg.copy_input,
            "qa_min_change": cfg.qa_min_change,
            "qa_max_change": cfg.qa_max_change,
        },
    }
    if cfg.max_output_pixels:  # it decides which rows are errors; unset, older runs keep their fingerprint
        identity["outputs"]["max_output_pixels"] = cfg.max_output_pixels
    if cfg.output_format != IDENTITY_DEFAULTS["outputs.format"]:
        # other files, same pixels: still another run (one output holds one format). Left out for the default
        # so that runs from before --output-format keep their fingerprint
        identity["outputs"]["format"] = cfg.output_format
    if qa_clip or cfg.qa_min_clip_dir is not None:  # unset, runs from before CLIP QA keep their fingerprint
        identity["outputs"].update(qa_clip=qa_clip, qa_min_clip_dir=cfg.qa_min_clip_dir)
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
IDENTITY_DEFAULTS = {"outputs.format": "webdataset"}


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
