"""What the model stages hold: a picklable recipe (`ModelSpec`) that each actor turns into an editor.

An *editor* is anything with MGIE's stage API:

    editor.express(images, instructions) -> object with .texts (list[str]), .conditioning (B, S, C) and
                                            .truncated (list[bool]: the instruction was cut to the token limit)
    editor.sample(images, conditioning, seeds, num_inference_steps=..., guidance_scale=...,
                  image_guidance_scale=...) -> list[PIL.Image]

`--model` takes `tiny` (or any other mgie preset: random weights), a checkpoint path/URL written by
`MGIE.save_pretrained` / `mgie-batch convert`, or `noop` (no model at all: the input image comes back and
the expressive instruction is the instruction; for measuring the pipeline's own overhead).

The driver never loads weights: `describe()` reads the identity (fingerprint) and config that go into the
run fingerprint from the checkpoint's small JSON files, or builds a preset on the meta device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal

from pipeline.settings import setting

NOOP = "noop"
# mgie.sampler.SCHEDULERS' names, listed here so that `--help` need not import diffusers (a test keeps them equal)
SCHEDULER_NAMES = ("ddim", "dpm_solver", "euler", "euler_ancestral")


@dataclass(frozen=True)
class ModelSpec:
    # preset name, checkpoint path/URL, or "noop". The command line's default is the shipped mgie-tiny
    # (jobs/edit.py); in Python the tiny random preset, which tests and examples build in a second
    source: str = setting(
        "tiny",
        flag="--model",
        help="the shipped mgie-tiny (a 64 px MGIE trained here on 12 global edits: tone, colour, blur, sharpen), "
        "a checkpoint directory or URL written by `mgie-batch convert` or `train`, a preset with random weights "
        "(tiny, mgie-tiny-init, mgie-7b), or 'noop' (no model: measures pipeline overhead)",
    )
    seed: int = setting(0, flag="--model-seed", help="weight seed of a preset model")
    device: str = setting("auto", flag="--device", help="model device: auto, cpu, cuda")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = setting(
        "auto", flag="--dtype", help="model precision (default: auto = float16 on cuda, float32 on cpu)"
    )
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options of `source`
    optimize: bool = True  # channels-last UNet/VAE on cuda (same outputs, faster convolutions)
    compile: Literal[COMPILES] = setting(
        "auto", flag="--compile", help="torch.compile the diffusion UNet: auto = on CUDA only"
    )
    compile_cache: str = setting(
        "",
        flag="--compile-cache",
        parse=str,
        help="folder of compiled kernels reused across runs (default: ~/.cache/mgie-batch/compile)",
    )
    # diffusion scheduler instead of the model's own; "" keeps it (in the identity only when set)
    scheduler: Literal[("", *SCHEDULER_NAMES)] = setting(
        "",
        flag="--scheduler",
        help="diffusion scheduler instead of the model's own (default: the model's, euler_ancestral as in the "
        "reference)",
    )

    @property
    def kind(self) -> str:
        if self.source == NOOP:
            return "noop"
        from mgie.config import PRESETS

        return "preset" if self.source in PRESETS else "checkpoint"

    def describe(self) -> dict[str, Any]:
        """{"fingerprint", "name", "config"} without loading weights."""
        kind = self.kind
        if kind == "noop":
            cfg = NoopEditor().config
            return {
                "kind": kind,
                "source": self.source,
                "fingerprint": NoopEditor.FINGERPRINT,
                "name": NOOP,
                "config": {"sampler": vars(cfg.sampler), "prompt": {}, "generation": {}},
            }
        if kind == "preset":
            from mgie import MGIE

            # the meta device: the preset's identity without allocating (7B presets included)
            model = MGIE.from_preset(self.source, seed=self.seed, parts={"edit"}, device="meta")
            config, fingerprint = model.config, model.fingerprint()
        else:
            import fsspec

            from mgie.config import MGIEConfig
            from mgie.shipped import resolve_model_source

            fs, root = fsspec.core.url_to_fs(resolve_model_source(self.source), **self.storage_options)
            root = root.rstrip("/")
            for name in ("config.json", "weights.json"):
                if not fs.exists(f"{root}/{name}"):
                    raise FileNotFoundError(
                        f"--model {self.source}: no {name} there; expected a shipped model (mgie-tiny), a preset "
                        f"name (tiny, mgie-tiny-init, mgie-7b), 'noop', or a checkpoint directory written by "
                        f"`mgie-batch convert` or `mgie-batch train`"
                    )
            config = MGIEConfig.from_dict(json.loads(fs.cat_file(f"{root}/config.json")))
            fingerprint = json.loads(fs.cat_file(f"{root}/weights.json"))["fingerprint"]
        return {
            "kind": kind,
            "source": self.source,
            "fingerprint": fingerprint,
            "name": config.name,
            "config": {
                "sampler": vars(config.sampler),
                "prompt": vars(config.prompt),
                "generation": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config.generation).items()},
            },
        }

    def licence(self) -> dict[str, Any] | None:
        """The weights' licence record (`licence.json`, written by `convert`), or None: presets and `noop` are
        random or no weights, and a checkpoint without the file never said."""
        if self.kind != "checkpoint":
            return None
        import fsspec

        from mgie.checkpoint import read_licence
        from mgie.shipped import resolve_model_source

        fs, root = fsspec.core.url_to_fs(resolve_model_source(self.source), **self.storage_options)
        return read_licence(fs, root)

    def load(self, parts: set[str]):
        """The editor for one stage (`{"express"}` or `{"edit"}`), on this process's device."""
        if self.kind == "noop":
            return NoopEditor()
        from mgie import MGIE
        from mgie.devices import resolve_device, resolve_dtype

        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype, device)
        if self.kind == "preset":
            model = MGIE.from_preset(self.source, seed=self.seed, parts=parts, device=device, dtype=dtype)
        else:
            model = MGIE.from_pretrained(
                self.source, parts=parts, storage_options=self.storage_options or None, device=device, dtype=dtype
            )
        if self.scheduler and model._sampler is not None:
            import dataclasses

            # the sampler builds its scheduler from this config at every call; the rest of the config stays
            model.config.scheduler = dataclasses.replace(model.config.scheduler, name=self.scheduler)
            model._sampler.scheduler_cfg = model.config.scheduler
        on_cuda = device.type == "cuda"
        compile_unet = self.compile == "on" or (self.compile == "auto" and on_cuda)
        if compile_unet:
            use_compile_cache(self.compile_cache or COMPILE_CACHE)
        if (self.optimize and on_cuda) or compile_unet:
            model.optimize(channels_last=on_cuda, compile_unet=compile_unet, fuse_qkv=on_cuda)
        return model


COMPILES = ("auto", "on", "off")
COMPILE_CACHE = "~/.cache/mgie-batch/compile"


def use_compile_cache(directory: str) -> str:
    """Points inductor's and triton's on-disk caches at `directory`, so an actor that starts again (the next
    run, a restarted actor) loads the compiled UNet kernels instead of compiling them (tens of seconds at
    real sizes). Both libraries read these variables when they compile, so setting them here, before the
    first compiled call, is enough. -> the directory used."""
    import os

    path = os.path.abspath(os.path.expanduser(directory))
    os.makedirs(path, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(path, "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(path, "triton"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return path


class NoopEditor:
    """A stand-in with the editor API and no model: measures everything around the GPU work."""

    FINGERPRINT = "noop"

    def __init__(self):
        self.config = SimpleNamespace(
            name=NOOP,
            sampler=SimpleNamespace(
                num_inference_steps=0, guidance_scale=0.0, image_guidance_scale=0.0, resolution=512, seed=13331
            ),
        )

    def fingerprint(self) -> str:
        return self.FINGERPRINT

    def express(self, images, instructions):
        import numpy as np

        return SimpleNamespace(
            texts=list(instructions),
            conditioning=np.zeros((len(images), 1, 1), np.float32),
            truncated=[False] * len(images),
        )  # no tokenizer, so nothing is cut

    def sample(
        self,
        images,
        conditioning,
        seeds,
        num_inference_steps=None,
        guidance_scale=None,
        image_guidance_scale=None,
        rng=None,
        strength=None,
    ):
        return [img.copy() for img in images]
