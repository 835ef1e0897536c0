"""`mgie-batch train`: MGIE's objective under Ray Train (TorchTrainer, DDP), data from triplet shards via Ray Data.

    run_training(cfg)                        driver: dataset, TorchTrainer, fit
      train_loop(cfg) on every worker        model (preset or checkpoint, or the latest checkpoint of this
                                             output), AdamW + cosine warmup, DDP, seeded batches, checkpoints

Resume: the same command after a crash finds `checkpoints/latest.json`, restores model, optimizer,
scheduler, RNG and step, skips the batches already trained in that epoch and continues the same loss curve
(each step's timesteps, noise and dropout come from a generator seeded by (seed, step, rank)).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

# fields that may differ between an interrupted run and its resume: they change how, not what, is trained
OPERATIONAL_FIELDS = (
    "output",
    "s3_endpoint",
    "fail_at_step",
    "cpus_per_worker",
    "log_every",
    "ray_storage",
    "cache_rows",
    "threads",
    "cache_frozen",
)


class TrainConfigMismatch(RuntimeError):
    """The output prefix holds a run with other training settings."""


@dataclass
class TrainConfig:
    input: str = ""  # triplet shards (see pipeline.training.data.training_shards)
    output: str = ""  # checkpoints, metrics.jsonl, loss_curve.png (local folder or any fsspec URL)
    model: str = "tiny"  # preset (random init, seeded by model_seed) or an mgie-batch checkpoint to start from
    model_seed: int = 0
    stage: str = "mgie"  # mgie: the MGIE objective | autoencoder: the VAE alone (a model trained from scratch)
    mode: str = "e2e"  # e2e | ft | fz (mgie.training.Mode)
    llm_blocks: bool = False  # the LLaMA blocks learn too (from scratch only; the reference freezes them)
    ins_loss: bool = True
    lgie: bool = False
    edit_weight: float = 0.5
    min_snr_gamma: float = 0.0  # min-SNR-gamma weighting of L_edit; 0 = off (the reference's plain MSE)
    ema_decay: float = 0.0  # an EMA of the edit head and UNet, saved as the checkpoint's weights; 0 = off
    steps: int = 1000
    batch_size: int = 8  # per worker
    lr: float = 5e-4
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # 0 = off
    resolution: int = 256  # diffusion resolution during training (reference: 256)
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    seed: int = 13331
    shuffle_buffer: int = 256
    cache_rows: int = 1024  # an epoch of at most this many raw rows is kept in memory, not read again
    checkpoint_every: int = 500
    keep_checkpoints: int = 3  # 0 = keep all
    log_every: int = 10  # metrics.jsonl flush (every step is logged; flushes also happen at checkpoints)
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    # torch threads per worker; 0 = what Ray gives (OMP_NUM_THREADS = the worker's CPUs). A CPU run on a small
    # machine asks for all its cores while the worker reserves one, which leaves room for the data readers
    threads: int = 0
    # the frozen parts' outputs (CLIP features, VAE latents) computed once per row and kept in memory
    # (mgie.training.FrozenFeatures): for a dataset that fits in memory, as mgie-tiny's does
    cache_frozen: bool = False
    s3_endpoint: str | None = None  # --endpoint-url (pipeline.location.Reach)
    fail_at_step: int | None = None  # testing: raise after this step (a crash between checkpoints)
    ray_storage: str = ""  # Ray Train's own run folder (default: a temp dir; our checkpoints go to output)

    @property
    def reach(self):
        """How the input, output and model stores are reached (pipeline.location)."""
        from pipeline.location import Reach

        return Reach(self.s3_endpoint)

    def identity(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: v for k, v in data.items() if k not in OPERATIONAL_FIELDS}


def _reference() -> TrainConfig:
    return TrainConfig()


def _tiny() -> TrainConfig:
    # a few CPU steps of the random tiny model: tests and smoke runs
    return TrainConfig(
        model="tiny",
        steps=20,
        batch_size=2,
        lr=2e-3,
        resolution=32,
        shuffle_buffer=4,
        checkpoint_every=5,
        keep_checkpoints=0,
        log_every=5,
        cpus_per_worker=0.5,
    )


def _mgie_tiny() -> TrainConfig:
    # mgie-tiny from scratch (make train-tiny): 64 px, the LLM's blocks learn since none is pretrained
    return TrainConfig(
        model="mgie-tiny-init",
        steps=3000,
        batch_size=64,
        lr=1e-3,
        resolution=64,
        llm_blocks=True,
        shuffle_buffer=1024,
        cache_rows=100_000,
        cache_frozen=True,
        checkpoint_every=500,
        keep_checkpoints=1,
        log_every=50,
    )


TRAIN_PRESETS = {"reference": _reference, "tiny": _tiny, "mgie-tiny": _mgie_tiny}
STAGES = ("mgie", "autoencoder")


def train_preset(name: str, **overrides: Any) -> TrainConfig:
    try:
        cfg = TRAIN_PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown training preset {name!r}; known: {sorted(TRAIN_PRESETS)}") from None
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def lr_lambda(total: int, warmup_ratio: float, min_ratio: float):
    """Linear warmup over ceil(warmup_ratio * total) steps, then cosine to min_ratio (the reference schedule)."""
    warmup = math.ceil(warmup_ratio * total)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def step_generator(seed: int, step: int, rank: int):
    import torch

    return torch.Generator("cpu").manual_seed((seed * 1_000_003 + step) * 1_009 + rank)


# ------------------------------------------------------------------------------------------ the worker


def _load_model(cfg: TrainConfig, store, device):
    """-> (MGIE in fp32, the latest checkpoint record or None). fp32 master weights whatever the stored
    precision (a converted release checkpoint is fp16); autocast runs the bf16 compute."""
    import torch

    from mgie.config import PRESETS
    from mgie.model import MGIE
    from pipeline.training.state import latest_checkpoint

    latest = latest_checkpoint(store)
    if latest is not None:
        source, options = store.url.rstrip("/") + "/" + latest["path"], store.options
    elif cfg.model in PRESETS:
        return MGIE.from_preset(cfg.model, seed=cfg.model_seed, device=device, dtype=torch.float32), None
    else:
        source, options = cfg.model, cfg.reach.at(cfg.model).options
    return MGIE.from_pretrained(source, storage_options=options or None, device=device, dtype=torch.float32), latest


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from mgie.autoencoder_training import AutoencoderTrainModule
    from mgie.devices import resolve_dtype
    from mgie.training import MGIETrainModule, ObjectiveConfig, build_batch
    from pipeline.storage import Store
    from pipeline.training import state as ts
    from pipeline.training.data import BatchPlan, decode_batch
    from pipeline.training.ema import WeightEMA

    cfg = TrainConfig(**{**config, "adam_betas": tuple(config["adam_betas"])})
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed + rank)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    store = Store.open(cfg.reach.at(cfg.output))

    # 1. model: the latest checkpoint of this output, else the configured start
    model, latest = _load_model(cfg, store, device)
    objective = ObjectiveConfig(
        mode=cfg.mode,
        ins_loss=cfg.ins_loss,
        lgie=cfg.lgie,
        edit_weight=cfg.edit_weight,
        llm_blocks=cfg.llm_blocks,
        min_snr_gamma=cfg.min_snr_gamma,
    )
    module = (
        AutoencoderTrainModule(model)
        if cfg.stage == "autoencoder"
        else MGIETrainModule(model, objective, frozen_cache=cfg.cache_frozen)
    )
    params = module.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.steps, cfg.warmup_ratio, cfg.min_lr_ratio))
    step, epoch, steps_per_epoch, metrics = 0, 0, 0, []  # steps_per_epoch: known once an epoch has ended
    averaged = {"edit_head": module.edit_head, "unet": module.unet} if cfg.stage == "mgie" else {}
    ema = WeightEMA(averaged, cfg.ema_decay) if cfg.ema_decay and averaged else None
    if latest is not None:
        state = ts.load_trainer_state(store, latest["path"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, steps_per_epoch = state["step"], state["epoch"], state["steps_per_epoch"]
        metrics = state["metrics"]
        ts.load_worker_rng(store, latest["path"], rank)
        if ema is not None:  # the checkpoint's model files hold the average; the state the trained weights
            ema = WeightEMA.resumed(averaged, cfg.ema_decay, state["ema_updates"], state["online"])
    # DDP over the trainable view; frozen components carry no gradient state
    ddp = ray.train.torch.prepare_model(module, move_to_device=False, parallel_strategy="ddp")
    autocast = resolve_dtype(cfg.precision, device, half=torch.bfloat16) == torch.bfloat16  # fp32 master weights

    # 2. batches: the epoch's replayable order, minus the global batches already trained
    plan = BatchPlan(
        world_size=world, rank=rank, batch_size=cfg.batch_size, shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed
    )
    shard = ray.train.get_dataset_shard("train")

    def checkpoint(at: int) -> None:
        if rank == 0:
            ts.save_checkpoint(store, module, at, epoch, optimizer, scheduler, metrics, steps_per_epoch, ema)
        if dist.is_initialized():
            dist.barrier()  # rank 0's model files exist before any rank adds its RNG file
        ts.save_worker_rng(store, at, rank)
        if dist.is_initialized():
            dist.barrier()  # every rank's files exist before latest.json names the checkpoint
        if rank == 0:
            ts.commit_checkpoint(store, at, cfg.keep_checkpoints)
            ts.write_metrics(store, metrics)

    cached: list[dict] | None = None  # the whole raw stream, when it is small (every epoch reads the same)

    def stream():
        nonlocal cached
        if cached is not None:
            yield from cached
            return
        kept: list[dict] | None = []
        for row in shard.iter_rows():
            if kept is not None:
                if len(kept) < cfg.cache_rows:
                    kept.append(row)
                else:
                    kept = None
            yield row
        cached = kept

    while step < cfg.steps:
        skip = step - epoch * steps_per_epoch if steps_per_epoch else step
        seen = 0
        for rows in plan.epoch_batches(stream(), epoch, skip_batches=skip):
            t0 = time.perf_counter()
            data = decode_batch(rows, cfg.resolution)
            batch = build_batch(
                model,
                data["inputs"],
                data["goals"],
                data["instructions"],
                data["expressive"],
                lgie=cfg.lgie,
                keys=data["keys"],
            )
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                out = ddp(batch, step_generator(cfg.seed, step, rank))
            out.loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update()
            step += 1
            seen += 1
            losses = torch.stack([out.loss.detach().float(), out.ins.float(), out.edit.float()])
            if dist.is_initialized():
                dist.all_reduce(losses)
                losses /= world
            elapsed = time.perf_counter() - t0
            metrics.append(
                {
                    "step": step,
                    "epoch": epoch,
                    "loss": float(losses[0]),
                    "ins": float(losses[1]),
                    "edit": float(losses[2]),
                    "lr": lr,
                    "step_s": round(elapsed, 4),
                    "rows_per_s": round(plan.global_batch / elapsed, 3),
                    "time": time.time(),
                }
            )
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                checkpoint(step)
            elif rank == 0 and step % cfg.log_every == 0:
                ts.write_metrics(store, metrics)
            if cfg.fail_at_step is not None and step == cfg.fail_at_step:
                raise RuntimeError(f"injected failure after step {step} (--fail-at-step)")
            if step >= cfg.steps:
                break
        else:  # the epoch ran out: the next one starts from its first batch
            if seen == 0 and skip == 0:
                raise ValueError(
                    f"the training data has fewer usable rows than one global batch "
                    f"({plan.global_batch} = {world} workers x {cfg.batch_size})"
                )
            steps_per_epoch = skip + seen
            epoch += 1
    ray.train.report({"step": step, "loss": metrics[-1]["loss"] if metrics else None})


# ------------------------------------------------------------------------------------------ the driver


def check_run_record(cfg: TrainConfig) -> bool:
    """Writes the run record on the first run; a later run must have the same identity. -> True if resuming."""
    from pipeline.layout import TrainLayout
    from pipeline.storage import Store

    store = Store.open(cfg.reach.at(cfg.output))
    identity = cfg.identity()
    if store.exists(TrainLayout.RUN_RECORD):
        previous = json.loads(store.read_bytes(TrainLayout.RUN_RECORD))["identity"]
        diff = sorted(
            k for k in set(previous) | set(identity) if json.dumps(previous.get(k)) != json.dumps(identity.get(k))
        )
        if diff:
            shown = ", ".join(f"{k}: {previous.get(k)!r} -> {identity.get(k)!r}" for k in diff)
            raise TrainConfigMismatch(
                f"{cfg.output} holds a training run with other settings ({shown}); "
                f"use a new --output or the same settings"
            )
        return True
    store.write_atomic(TrainLayout.RUN_RECORD, json.dumps({"identity": identity}, indent=2, sort_keys=True).encode())
    return False


def _absolute(path: str) -> str:
    """A local path made absolute; a URL (s3://, gs://, ...) or a builtin: name unchanged."""
    return path if not path or "://" in path or path.startswith("builtin:") else os.path.abspath(path)


def for_workers(cfg: TrainConfig) -> TrainConfig:
    """The settings as the workers get them: they run in Ray's own working folder, where a relative local path
    would put their checkpoints (the run record keeps the paths as given, so its identity does not change)."""
    return dataclasses.replace(
        cfg,
        output=_absolute(cfg.output),
        input=_absolute(cfg.input),
        model=cfg.model if _is_preset(cfg.model) else _absolute(cfg.model),
    )


def _is_preset(model: str) -> bool:
    from mgie.config import PRESETS
    from mgie.shipped import SHIPPED

    return model in PRESETS or model in SHIPPED


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Trains to cfg.steps (resuming from the output's latest checkpoint). -> summary"""
    from ray.train import DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.storage import Store
    from pipeline.training.data import build_dataset, training_shards
    from pipeline.training.state import latest_checkpoint

    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.workers < 1 or cfg.checkpoint_every < 1:
        raise ValueError("steps, batch_size, workers and checkpoint_every must be >= 1")
    if cfg.stage not in STAGES:
        raise ValueError(f"--stage {cfg.stage!r}: known stages are {', '.join(STAGES)}")
    shards = training_shards(cfg.input, cfg.reach)  # a wrong --input fails before the run record exists
    resumed = check_run_record(cfg)
    store = Store.open(cfg.reach.at(cfg.output))
    start = latest_checkpoint(store)
    if start is not None and start["step"] >= cfg.steps:  # a finished run: nothing to start workers for
        return {
            "output": cfg.output,
            "shards": len(shards),
            "resumed_from_step": start["step"],
            "resumed": True,
            "step": start["step"],
            "checkpoint": f"{store.url}/{start['path']}",
            "seconds": 0.0,
        }
    dataset = build_dataset(shards, cfg.reach)
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {})}
    storage = cfg.ray_storage or os.path.join(tempfile.gettempdir(), "mgie-train")
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=dataclasses.asdict(for_workers(cfg)),
        scaling_config=ScalingConfig(
            num_workers=cfg.workers, use_gpu=cfg.gpus_per_worker > 0, resources_per_worker=resources
        ),
        datasets={"train": dataset},
        dataset_config=DataConfig(datasets_to_split=[]),  # every worker reads the stream; see train_data
        run_config=RunConfig(
            name=f"mgie-train-{uuid.uuid4().hex[:8]}",
            storage_path=storage,
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    t0 = time.time()
    trainer.fit()
    latest = latest_checkpoint(store)
    return {
        "output": cfg.output,
        "shards": len(shards),
        "resumed_from_step": start["step"] if start else 0,
        "resumed": resumed,
        "step": latest["step"] if latest else 0,
        "checkpoint": f"{store.url}/{latest['path']}" if latest else None,
        "seconds": round(time.time() - t0, 1),
    }
