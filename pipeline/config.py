"""Typed configuration of an edit run, one group per concern; `EditConfig` holds them.

    EditConfig(io=IOSettings(input="photos.tar", output="out"), outputs=OutputSettings(resize="crop"))
    EditConfig.of(input="photos.tar", output="out", resize="crop")     # the same, by setting name

Each setting is declared once, as a field of its group (pipeline.settings.setting): its flag, help, default,
choices and whether it joins the run fingerprint. The command line (jobs/edit.py) and the run identity
(pipeline/identity.py) are derived from the groups; the stages receive their group as it is.

    IOSettings        what to edit, where outputs go, which rows (--input, --output, --limit, ...)
    ModelSpec         the model (pipeline.editors: --model, --model-seed, --scheduler, --device, ...)
    SamplingSettings  how each row is edited (--instruction, --steps, --guidance-scale, ..., --unit-rows)
    OutputSettings    the output images and files (pipeline.outputs: --resize, --output-size, ...)
    QAChecks          auto-QA bounds and CLIP (pipeline.quality: --qa-min-change, --qa-clip, ...)
    SourceOptions     manifest columns and image fetching (pipeline.sources)
    ResourceSettings  Ray resources (--resources, --layout, --batch-size, ...); never in the fingerprint
    RunSettings       the driver (--lease-timeout, --no-progress); never in the fingerprint
    QuarantineSettings rows that kill their workers (pipeline.quarantine); never in the fingerprint
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from mgie.config import DETAIL_REFERENCES, RNG_MODES
from pipeline.editors import ModelSpec
from pipeline.location import Location, Reach
from pipeline.outputs import OutputSettings
from pipeline.quality import QAChecks
from pipeline.quarantine import QuarantineSettings
from pipeline.settings import check_choices, setting, settings_of
from pipeline.sources import SourceOptions


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
    # 2-core laptop/CI: everything fractional, one thread per actor so two actors do not fight for cores;
    # read/decode and write tasks at half a CPU: as fast once running as at a quarter, and half the worker
    # processes to start before the first commit (bench/results/pipeline-overhead.json, docs/performance.md)
    "cpu": Resources("cpu", StageResources(4, 1, 0, 0.25, 1), StageResources(4, 1, 0, 0.25, 1), 0.5, 0.5, 1),
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
class IOSettings:
    """What to edit and where the outputs go."""

    # shard pattern(s): braces, globs, folders, files, manifests, @list files (pipeline.inputs.input_patterns)
    input: str | tuple[str, ...] = setting(
        flag="--input",
        repeat=True,
        help="what to edit: WebDataset .tar shards, a manifest (.parquet, .csv, .jsonl: an image column of URLs, "
        "paths or bytes and an instruction column) or a folder of images (*.jpg|jpeg|png|webp with sibling "
        ".txt/.json instructions); local, file://, s3://, http(s):// or any fsspec URL; brace patterns "
        "('shard-{000..099}.tar'), globs, folders. Repeat --input for several (a path with spaces stays one "
        "path), or give @LIST_FILE with one per line (default: required)",
    )
    output: str = setting(flag="--output", help="output prefix (local folder or URL) (default: required)")
    endpoint_url: str | None = setting(
        None,
        flag="--endpoint-url",
        help="S3 endpoint for s3:// URLs, e.g. http://127.0.0.1:9000 (default: $AWS_ENDPOINT_URL, else AWS S3)",
    )
    limit: int | None = setting(
        None,
        flag="--limit",
        help="stop after about this many new rows, rounded up to whole units (default: no limit)",
    )
    retry_errors: bool = setting(
        False,
        flag="--retry-errors",
        help="reprocess only the error rows of already committed units; ok rows stay as they are",
    )

    @property
    def reach(self) -> Reach:
        """How every store the run names is reached: inputs, output, model, QA weights."""
        return Reach.of(self.endpoint_url)

    @property
    def output_location(self) -> Location:
        return self.reach.at(self.output)

    def __post_init__(self):
        if isinstance(self.input, list):
            object.__setattr__(self, "input", tuple(self.input))
        if isinstance(self.input, tuple) and len(self.input) == 1:
            # one --input keeps the meaning of a single string (split on spaces unless it names one path)
            object.__setattr__(self, "input", self.input[0])
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")


@dataclass(frozen=True)
class SamplingSettings:
    """How every row is edited. The sampler overrides (None: the model's own) join the fingerprint as the
    sampler they resolve to against the model (pipeline.identity.SamplerSettings); instruction and unit
    size as they are."""

    instruction: str | None = setting(
        None,
        flag="--instruction",
        identity=True,
        help="one instruction for every row (catalogue retouching) (default: each row's own: txt field, else "
        "json 'instruction')",
    )
    steps: int | None = setting(
        None, flag="--steps", help="diffusion steps (default: the model's sampler config; tiny 4, mgie-7b 100)"
    )
    guidance_scale: float | None = setting(
        None, flag="--guidance-scale", help="text classifier-free guidance (default: the model's, 7.5)"
    )
    image_guidance_scale: float | None = setting(
        None, flag="--image-guidance-scale", help="image classifier-free guidance (default: the model's, 1.5)"
    )
    strength: float | None = setting(
        None,
        flag="--strength",
        help="where sampling starts: 1 = pure noise (the reference); below 1 the photo's latent noised that far "
        "along the schedule, which keeps a small model near the photo (default: the model's; mgie-7b 1)",
    )
    detail_reference: Literal[DETAIL_REFERENCES] | None = setting(
        None,
        flag="--detail-reference",
        help="what a full-size output adds the photo's finer detail against: 'input' (the working-size photo) "
        "or 'reconstruction' (its VAE round trip: also cancels the VAE's blur and colour error; one more VAE "
        "pass per row) (default: the model's; mgie-7b input)",
    )
    resolution: int | None = setting(
        None,
        flag="--resolution",
        help="working resolution in px: the longer side with --resize fit, the square's side with crop "
        "(default: the model's; tiny 32, mgie-7b 512)",
    )
    seed: int | None = setting(
        None,
        flag="--seed",
        help="run seed; each row's seed is f(run seed, key) unless its json gives 'seed' (default: the model's "
        "sampler seed, 13331)",
    )
    rng: Literal[RNG_MODES] | None = setting(
        None,
        flag="--rng",
        help="noise generators: 'cpu', one CPU generator per row (the same pixels on any device and batch "
        "size); 'reference', one per row on the model's device drawn as the official demo draws them (its "
        "pixels with the official weights) (default: the model's, cpu)",
    )
    unit_rows: int = setting(
        64,
        flag="--unit-rows",
        identity=True,
        help="input rows per unit of output (one tar, one ledger file, one commit)",
    )

    def __post_init__(self):
        check_choices(self)
        if self.unit_rows < 1:
            raise ValueError(f"--unit-rows must be >= 1, got {self.unit_rows}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.instruction is not None and not self.instruction.strip():
            raise ValueError("--instruction is empty")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise ValueError(
                f"--resolution must be a positive multiple of 8 (the VAE works on 8x8 pixel blocks), "
                f"got {self.resolution}"
            )


@dataclass(frozen=True)
class ResourceSettings:
    """Ray resources of the stages: a preset and what a run overrides of it. Not in the fingerprint: the
    same run may resume on another cluster."""

    resources: str = setting(
        "auto",
        flag="--resources",
        choices=lambda: ("auto", *RESOURCE_PRESETS),
        help="stage sizes (batch, actors, GPUs/CPUs per actor); auto = 'cpu' without GPUs, else '24gb-per-gpu' "
        "times the GPUs; see docs/deploy.md",
    )
    layout: Literal[LAYOUTS] = setting(
        "auto",
        flag="--layout",
        help="model actors: 'split', an MLLM pool and a diffusion pool sharing GPUs; 'fused', one actor per GPU "
        "holding both, the next unit's MLLM overlapping this unit's diffusion; auto = fused with GPUs, split "
        "without",
    )
    batch_size: int | None = setting(
        None, flag="--batch-size", help="rows per diffusion call (default: the --resources preset's)"
    )
    express_batch_size: int | None = setting(
        None, flag="--express-batch-size", help="rows per MLLM call (default: the --resources preset's)"
    )
    concurrency: int | None = setting(
        None, flag="--concurrency", help="actors per model stage (default: the --resources preset's)"
    )
    num_gpus: float | None = setting(
        None,
        flag="--num-gpus",
        help="GPUs per model actor; fractions share a GPU (default: the --resources preset's)",
    )

    def __post_init__(self):
        check_choices(self)
        for name, value in (("--batch-size", self.batch_size), ("--express-batch-size", self.express_batch_size)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.num_gpus is not None and self.num_gpus < 0:
            raise ValueError(f"--num-gpus must be >= 0, got {self.num_gpus}")

    def pick(self, cluster_gpus: float) -> Resources:
        """The preset for this cluster with this run's overrides."""
        return pick_resources(self.resources, cluster_gpus).with_overrides(
            self.layout, self.batch_size, self.express_batch_size, self.concurrency, self.num_gpus
        )


@dataclass(frozen=True)
class RunSettings:
    """The driver's own behaviour; not in the fingerprint."""

    lease_timeout_s: float = setting(
        300.0,
        flag="--lease-timeout",
        metavar="SECONDS",
        help="one driver per output: a driver holds the output's lease and refreshes it while it runs; another "
        "driver may take the output over once the lease's heartbeat is this old, or at once when it names a "
        "process on this host that is gone",
    )
    progress: bool = setting(True, flag="--no-progress", negate=True, help="no live progress line (default: shown)")

    def __post_init__(self):
        if self.lease_timeout_s <= 0:
            raise ValueError(f"--lease-timeout must be > 0 seconds, got {self.lease_timeout_s}")


@dataclass(frozen=True)
class EditConfig:
    """A whole edit run: what `mgie-batch edit` runs (`pipeline.run.run_edit(cfg)`)."""

    io: IOSettings
    model: ModelSpec = field(default_factory=ModelSpec)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    outputs: OutputSettings = field(default_factory=OutputSettings)
    qa: QAChecks = field(default_factory=QAChecks)
    source: SourceOptions = field(default_factory=SourceOptions)
    compute: ResourceSettings = field(default_factory=ResourceSettings)
    run: RunSettings = field(default_factory=RunSettings)
    quarantine: QuarantineSettings = field(default_factory=QuarantineSettings)

    def __post_init__(self):
        if not self.model.storage_options:  # the model's store is reached as --endpoint-url says, as the inputs' is
            options = self.io.reach.at(self.model.source).options
            object.__setattr__(self, "model", dataclasses.replace(self.model, storage_options=options))

    def qa_for_actors(self):
        """What the edit actors check each edit with: the CLIP folder and its store's options."""
        from pipeline.quality import QASettings

        clip = self.qa.qa_clip
        return QASettings(clip, self.io.reach.at(clip).options if clip else {})

    @classmethod
    def of(cls, **settings: Any) -> "EditConfig":
        """The config from settings by name (`input=..., output=..., resize="crop"`), each routed to its
        group; a group itself may be given whole (`model=ModelSpec(...)`), and settings beside it change it."""
        fields = {f.name for f in dataclasses.fields(cls)}
        routed: dict[str, dict[str, Any]] = {}
        given = {name: settings.pop(name) for name in list(settings) if name in fields}
        for name, value in settings.items():
            group = SETTING_GROUP.get(name)
            if group is None:
                raise TypeError(f"EditConfig.of: unknown setting {name!r}")
            routed.setdefault(group, {})[name] = value
        # a setting given beside its whole group changes that group: of(**{**cfg.__dict__, "limit": 5})
        made = {g: dataclasses.replace(given[g], **kw) if g in given else GROUPS[g](**kw) for g, kw in routed.items()}
        return cls(**{**given, **made})


# group field name -> its class, and each setting's group: names are unique across groups (a test checks)
GROUPS = {
    "io": IOSettings,
    "sampling": SamplingSettings,
    "outputs": OutputSettings,
    "qa": QAChecks,
    "compute": ResourceSettings,
    "run": RunSettings,
}
SETTING_GROUP = {f.name: group for group, cls in GROUPS.items() for f, _ in settings_of(cls)}
