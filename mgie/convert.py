"""Converts the official MGIE release layout into an mgie-batch checkpoint directory.

Official inputs (as the reference release lays them out):
    llava_dir   merged LLaVA-7B-v1 HF directory: pytorch_model-*.bin shards (LLaMA + mm_projector) + tokenizer
    mgie_dir    mgie_7b/mllm.pt (embed_tokens, lm_head, edit_head.*, `emb`), mgie_7b/unet.pt (full UNet)
    clip_dir    CLIP ViT-L/14 HF directory (vision_model.* weights)
    ip2p_dir    InstructPix2Pix diffusers directory (vae/, scheduler/)

`.pt` / `.bin` files are read with `torch.load(weights_only=True)` only: no pickled code ever runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from . import checkpoint as ckpt
from .checkpoint import align_clip_keys, parameters_on_meta
from .config import MGIEConfig, SchedulerConfig, preset
from .model import ALL_PARTS, MGIE, build_component
from .sampler import SCHEDULERS
from .tokenizer import load_tokenizer

# keys that official files carry but that are not weights of ours (buffers older releases saved)
IGNORED = [
    re.compile(r".*rotary_emb\.inv_freq$"),
    re.compile(r".*position_ids$"),
]


@dataclass
class OfficialLayout:
    llava_dir: Path
    mgie_dir: Path
    clip_dir: Path
    ip2p_dir: Path

    def __post_init__(self):
        for name in ("llava_dir", "mgie_dir", "clip_dir", "ip2p_dir"):
            path = Path(getattr(self, name))
            if not path.is_dir():
                raise FileNotFoundError(f"{name}: directory not found: {path}")
            setattr(self, name, path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """One weight file: safetensors, or a `.bin`/`.pt` state dict loaded without unpickling code."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def load_sharded(directory: Path, stem: str) -> dict[str, torch.Tensor]:
    """All shards of a HF-style checkpoint (`{stem}-*-of-*.bin`, `{stem}.bin` or `.safetensors`)."""
    files = sorted(directory.glob(f"{stem}-*-of-*.bin")) + sorted(directory.glob(f"{stem}-*-of-*.safetensors"))
    files += [p for p in (directory / f"{stem}.safetensors", directory / f"{stem}.bin") if p.exists()]
    if not files:
        raise FileNotFoundError(f"{directory}: no {stem}*.bin / *.safetensors weight files")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(load_weights(path))
    return state


def _select(state: dict[str, torch.Tensor], prefix: str, new_prefix: str = "") -> dict[str, torch.Tensor]:
    return {new_prefix + k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    expected = module.state_dict()
    state = {k: v for k, v in state.items() if not any(p.match(k) for p in IGNORED)}
    state = align_clip_keys(state, set(expected))
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise KeyError(
            f"{what}: {len(missing)} missing keys {missing[:20]}, {len(unexpected)} unexpected keys {unexpected[:20]}"
        )
    wrong = [
        f"{k}: {tuple(v.shape)} != {tuple(expected[k].shape)}" for k, v in state.items() if v.shape != expected[k].shape
    ]
    if wrong:
        raise ValueError(f"{what}: shape mismatch for {wrong[:10]}")
    module.load_state_dict(state, strict=True, assign=True)


def _scheduler_config(ip2p_dir: Path, base: SchedulerConfig) -> SchedulerConfig:
    """The scheduler the reference builds: `from_config(scheduler_config.json)`.

    As in diffusers' `from_config`, a key the file lacks takes the scheduler class's own default, not our
    preset's: InstructPix2Pix's file has no `timestep_spacing`, so Euler-Ancestral's default "linspace"
    applies, whatever the preset says. Without a file the preset stands.
    """
    path = ip2p_dir / "scheduler" / "scheduler_config.json"
    if not path.exists():
        return base
    found = json.loads(path.read_text())
    names = {cls.__name__: name for name, cls in SCHEDULERS.items()}
    class_name = found.get("_class_name", SCHEDULERS[base.name].__name__)
    if class_name not in names:
        raise ValueError(f"{path}: scheduler {class_name!r} is not supported; known: {sorted(names)}")
    if found.get("trained_betas") is not None:
        raise ValueError(f"{path}: trained_betas are not supported (the InstructPix2Pix file has null)")
    defaults = {
        k: p.default
        for k, p in inspect.signature(SCHEDULERS[names[class_name]].__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    fields = {}
    for f in dataclasses.fields(SchedulerConfig):
        if f.name == "name":
            continue
        if f.name not in found and f.name not in defaults:
            raise ValueError(f"{path}: no value and no {class_name} default for {f.name!r}")
        fields[f.name] = found.get(f.name, defaults.get(f.name))
    return SchedulerConfig(name=names[class_name], **fields)


def convert_official(
    layout: OfficialLayout,
    output: str,
    preset_name: str = "mgie-7b",
    dtype: torch.dtype = torch.float16,
    storage_options: dict | None = None,
    licence: dict | None = None,
) -> str:
    """Builds and saves the mgie-batch checkpoint with the weights' licence (`licence.json`, default the
    official release's CC-BY-NC-4.0); returns its fingerprint."""
    config: MGIEConfig = preset(preset_name)
    config = config.replace(scheduler=_scheduler_config(layout.ip2p_dir, config.scheduler))
    llava = load_sharded(layout.llava_dir, "pytorch_model")
    # plain LLaVA's own embedding rows (base vocab + 3 image tokens): kept for the explain pass
    explain_vocab = int(llava["model.embed_tokens.weight"].shape[0])
    config = config.replace(llm=dataclasses.replace(config.llm, explain_vocab_size=explain_vocab))
    modules = {}
    for name in ("vision", "llm", "edit_head", "unet", "vae", "explain"):
        with parameters_on_meta():
            modules[name] = build_component(config, name)

    mllm = load_weights(layout.mgie_dir / "mllm.pt")
    unet = load_weights(layout.mgie_dir / "unet.pt")
    clip = (
        load_sharded(layout.clip_dir, "pytorch_model")
        if not (layout.clip_dir / "model.safetensors").exists()
        else load_file(str(layout.clip_dir / "model.safetensors"))
    )
    vae_dir = layout.ip2p_dir / "vae"
    vae_file = next(
        (
            p
            for p in (vae_dir / "diffusion_pytorch_model.safetensors", vae_dir / "diffusion_pytorch_model.bin")
            if p.exists()
        ),
        None,
    )
    if vae_file is None:
        raise FileNotFoundError(f"{vae_dir}: no diffusion_pytorch_model.safetensors/.bin")

    # LLM: LLaVA's decoder, with MGIE's trained embed_tokens / lm_head (vocabulary extended by [IMG])
    llm_state = {k: v for k, v in llava.items() if not k.startswith(("model.mm_projector.", "model.vision_tower."))}
    llm_state.update({k: v for k, v in mllm.items() if k.startswith(("model.embed_tokens.", "lm_head."))})
    _load_strict(modules["llm"], llm_state, "llm (LLaVA shards + mllm.pt)")
    plain = {"embed_tokens.weight": llava["model.embed_tokens.weight"], "lm_head.weight": llava["lm_head.weight"]}
    _load_strict(modules["explain"], plain, "explain (LLaVA's own embed_tokens / lm_head)")

    vision_state = _select(clip, "vision_model.", "tower.vision_model.")
    vision_state.update(_select(llava, "model.mm_projector.", "projector."))
    _load_strict(modules["vision"], vision_state, "vision (CLIP vision_model.* + LLaVA mm_projector)")

    head_state = _select(mllm, "edit_head.")
    emb = mllm.get("emb")
    if emb is None:  # older exports: the [IMG] rows of the trained embedding table
        emb = mllm["model.embed_tokens.weight"][config.tokens.img_ids]
    head_state["img_embeds"] = emb.reshape(config.tokens.num_img_tokens, -1)
    _load_strict(modules["edit_head"], head_state, "edit_head (mllm.pt edit_head.* + emb)")

    _load_strict(modules["unet"], unet, "unet (unet.pt)")
    _load_strict(modules["vae"], load_weights(vae_file), f"vae ({vae_file.name})")

    tokenizer = load_tokenizer(str(layout.llava_dir), config.tokens)
    model = MGIE(config, modules, tokenizer, fingerprint="", parts=ALL_PARTS).to(dtype=dtype)
    # the licence goes in first, then the weights: a reader that sees weights.json sees the licence too
    remote = ckpt.is_remote(output)
    directory = Path(tempfile.mkdtemp(prefix="mgie-convert-")) if remote else Path(ckpt.local_path(output))
    directory.mkdir(parents=True, exist_ok=True)
    ckpt.write_licence(directory, licence or dict(ckpt.OFFICIAL_LICENCE))
    fingerprint = model.save_pretrained(str(directory))
    if remote:
        ckpt.upload_dir(directory, output, storage_options)
        shutil.rmtree(directory, ignore_errors=True)
    return fingerprint
