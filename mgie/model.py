"""MGIE: the public model object (express -> sample), its presets, checkpoints and fingerprint."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch
from PIL import Image

from . import checkpoint as ckpt
from .config import MGIEConfig, check_strength, preset
from .devices import building_at, resolve_device
from .edit_head import EditHead
from .generation import greedy_generate
from .images import (
    check_images,
    check_texts,
    preprocess_image,
    to_clip_pixels,
    to_float_images,
    to_pil,
    to_vae_pixels,
)
from .mllm import ExplainHead, VisionEncoder, build_llm, splice_image_features
from .prompt import chat_prompt, clean_expressive, image_placeholder
from .sampler import InstructPix2PixSampler, build_unet, build_vae
from .shipped import resolve_model_source
from .tokenizer import build_tiny_tokenizer, check_no_reserved_tokens, load_tokenizer

EXPRESS, EDIT = "express", "edit"
ALL_PARTS = frozenset({EXPRESS, EDIT})
# which checkpoint components each part needs; the edit head is small and serves both (the null)
PART_COMPONENTS = {EXPRESS: ("vision", "llm", "edit_head"), EDIT: ("edit_head", "unet", "vae")}
_INIT_SEED_OFFSET = {"vision": 1, "llm": 2, "edit_head": 3, "unet": 4, "vae": 5, "explain": 6}
_FILES = {**ckpt.COMPONENT_FILES, **ckpt.OPTIONAL_COMPONENT_FILES}


@dataclass
class Expression:
    """What the MLLM stage produces for a batch."""

    texts: list[str]  # concise expressive instructions
    conditioning: torch.Tensor  # (B, num_queries, cross_attention_dim)
    raw_texts: list[str] = field(default_factory=list)  # decoded text before clean-up
    found_img: list[bool] = field(default_factory=list)  # row generated [IMG0] (else the fallback window)
    truncated: list[bool] = field(default_factory=list)  # instruction was cut to max_instruction_tokens


@dataclass
class EditResult:
    images: list[Image.Image]  # or (B, H, W, 3) float32 in [0, 1] for output_type "np"
    expressive_instructions: list[str]
    seeds: list[int]


def _components_for(parts: Iterable[str]) -> list[str]:
    parts = set(parts)
    unknown = parts - ALL_PARTS
    if unknown or not parts:
        raise ValueError(f"parts must be a non-empty subset of {sorted(ALL_PARTS)}, got {sorted(parts)}")
    names: list[str] = []
    for part in sorted(parts):
        names += [c for c in PART_COMPONENTS[part] if c not in names]
    return names


def _components_in(config: MGIEConfig, parts: Iterable[str]) -> list[str]:
    """The part's components, plus plain LLaVA's explain head when the config says the model has one."""
    names = _components_for(parts)
    if config.llm.explain_vocab_size and EXPRESS in set(parts):
        names.append("explain")
    return names


class MGIE:
    """MLLM-guided image editing: an instruction and an image in, an edited image out.

    Parts: `express` (CLIP + LLaMA + edit head: instruction -> expressive text + conditioning) and `edit`
    (UNet + VAE: conditioning + image -> edited image). A pipeline stage loads only the part it runs.
    """

    def __init__(
        self,
        config: MGIEConfig,
        components: dict[str, torch.nn.Module],
        tokenizer,
        fingerprint: str,
        parts: Iterable[str] = ALL_PARTS,
    ):
        self.config = config.validate()
        self.parts = frozenset(parts)
        self.tokenizer = tokenizer
        self.vision: VisionEncoder | None = components.get("vision")
        self.llm = components.get("llm")
        self.edit_head: EditHead = components["edit_head"]
        self.unet = components.get("unet")
        self.vae = components.get("vae")
        self.explain_head: ExplainHead | None = components.get("explain")
        self._fingerprint = fingerprint
        # inference by default, as transformers' from_pretrained leaves a model; nothing is frozen here: the
        # inference methods run without autograd themselves, and training picks its own trainable set
        for module in components.values():
            module.eval()
        self._sampler = InstructPix2PixSampler(self.unet, self.vae, config.scheduler) if self.unet is not None else None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_preset(
        cls,
        name: str,
        seed: int = 0,
        parts: Iterable[str] = ALL_PARTS,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> "MGIE":
        """A randomly initialised model of the preset's sizes; the same seed gives the same weights
        whichever parts are built."""
        config = preset(name)
        names = _components_in(config, parts)
        device = resolve_device(device or "cpu")
        components = {}
        with building_at(device, dtype):  # at the target precision: no fp32 copy of 7B weights
            for comp in names:
                components[comp] = seeded_component(config, comp, seed)
        if "llm" in components:
            share_img_rows(components["llm"], components["edit_head"], config.tokens)
        # presets have random weights: an in-process tokenizer with the real id layout stands in
        tokenizer = build_tiny_tokenizer(config.tokens) if EXPRESS in set(parts) else None
        identity = json.dumps({"preset": name, "seed": seed, "config": config.to_dict()}, sort_keys=True)
        fingerprint = hashlib.sha256(identity.encode()).hexdigest()
        model = cls(config, components, tokenizer, fingerprint, parts)
        return model.to(device, dtype)

    @classmethod
    def from_pretrained(
        cls,
        url: str,
        parts: Iterable[str] = ALL_PARTS,
        storage_options: dict | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> "MGIE":
        """Loads an mgie-batch checkpoint directory from a local path or any fsspec URL, or a shipped model by
        name (mgie.shipped: "mgie-tiny")."""
        directory = ckpt.fetch_dir(resolve_model_source(str(url)), storage_options)
        manifest = ckpt.read_manifest(directory)
        config = MGIEConfig.from_dict(json.loads((directory / "config.json").read_text()))
        components = {}
        for comp in _components_in(config, parts):
            with ckpt.parameters_on_meta():
                module = build_component(config, comp)
            ckpt.load_state(module, directory / _FILES[comp], comp)
            components[comp] = module
        tokenizer = load_tokenizer(str(directory / "tokenizer"), config.tokens) if EXPRESS in set(parts) else None
        model = cls(config, components, tokenizer, manifest["fingerprint"], parts)
        return model.to(resolve_device(device or "cpu"), dtype)

    def save_pretrained(self, url: str, storage_options: dict | None = None) -> str:
        """Writes a complete checkpoint (every part must be loaded). Returns the fingerprint."""
        if self.parts != ALL_PARTS or self.tokenizer is None:
            raise ValueError(f"save_pretrained needs the whole model; this one holds parts {sorted(self.parts)}")
        remote = ckpt.is_remote(str(url))
        directory = Path(tempfile.mkdtemp(prefix="mgie-save-")) if remote else Path(ckpt.local_path(str(url)))
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(self.config.to_json())
        self.tokenizer.save_pretrained(str(directory / "tokenizer"))
        for comp, module in self._components().items():
            ckpt.save_state(module, directory / _FILES[comp])
        manifest = ckpt.write_manifest(directory)
        if remote:
            ckpt.upload_dir(directory, str(url), storage_options)
            shutil.rmtree(directory, ignore_errors=True)
        self._fingerprint = manifest["fingerprint"]
        return self._fingerprint

    def _components(self) -> dict[str, torch.nn.Module]:
        unet = getattr(self.unet, "_orig_mod", self.unet)  # the module under a torch.compile wrapper
        found = {
            "vision": self.vision,
            "llm": self.llm,
            "edit_head": self.edit_head,
            "unet": unet,
            "vae": self.vae,
            "explain": self.explain_head,
        }
        return {k: v for k, v in found.items() if v is not None}

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "MGIE":
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        if kwargs:
            for module in self._components().values():
                module.to(**kwargs)
        return self

    def optimize(
        self,
        channels_last: bool = True,
        compile_unet: bool = False,
        compile_backend: str = "inductor",
        compile_mode: str | None = None,
        fuse_qkv: bool = False,
    ) -> "MGIE":
        """Speed settings for the diffusion side; outputs stay those of the plain path (tests check it).

        channels_last suits cuDNN's convolution kernels on tensor cores; `fuse_qkv` makes one matmul of each
        attention's q/k/v projections (k/v for cross-attention) instead of three; `torch.compile` of the UNet
        fuses its elementwise work and pays back its compile time after a few batches (docs/performance.md).
        """
        if self.unet is None:
            return self
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        if fuse_qkv:
            self.unet.fuse_qkv_projections()
        if compile_unet:
            # 1x1 convolutions as matmuls: the UNet's projections in and out of attention run on GEMM kernels
            import torch._inductor.config as inductor

            inductor.conv_1x1_as_mm = True
            self.unet = torch.compile(self.unet, backend=compile_backend, mode=compile_mode, dynamic=False)
            self._sampler.unet = self.unet
        return self

    @property
    def device(self) -> torch.device:
        return self.edit_head.img_embeds.device

    @property
    def dtype(self) -> torch.dtype:
        return self.edit_head.img_embeds.dtype

    def fingerprint(self) -> str:
        """Identity of the weights and config: the checkpoint's recorded hash, or the preset + seed."""
        return self._fingerprint

    # ------------------------------------------------------------------ stage 1: MLLM + edit head

    def _require(self, part: str) -> None:
        if part not in self.parts:
            raise RuntimeError(f"this model was loaded with parts {sorted(self.parts)}; {part!r} is needed")

    def _check_instructions(self, images, instructions) -> list[str]:
        """The argument checks, then reserved token text (`</s>`, `<im_patch>`, `[IMG0]`, ...) refused before
        anything runs: a ReservedTokenError (a ValueError, so the pipeline fails only that row)."""
        instructions = check_texts(instructions, len(images))
        check_no_reserved_tokens(self.tokenizer, instructions)
        return instructions

    def _truncate(self, text: str) -> tuple[str, bool]:
        limit = self.config.generation.max_instruction_tokens
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= limit:
            return text, False
        return self.tokenizer.decode(ids[:limit]).strip(), True

    def prompt_rows(self, instructions: list[str], template: str) -> list[list[int]]:
        """Token ids of the chat prompt with the image placeholder, one unpadded list per row."""
        cfg = self.config
        placeholder = image_placeholder(cfg.tokens, cfg.vision.num_patches)
        return [
            self.tokenizer(chat_prompt(cfg.prompt, template.format(instruction=text), placeholder))["input_ids"]
            for text in instructions
        ]

    @torch.no_grad()
    def embed_prompts(
        self, images: list[Image.Image], rows: list[list[int]], embedding: torch.nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pads the rows and splices each image's features into its <im_patch> positions.

        -> input embeddings (B, T, H) and attention mask (B, T), on the model's device
        """
        cfg = self.config
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), cfg.tokens.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        features = self.vision(to_clip_pixels(images, cfg.vision).to(self.device))  # (B, num_patches, H)
        embeds = (embedding or self.llm.get_input_embeddings())(ids)  # (B, T, H)
        return splice_image_features(embeds, ids, features, cfg.tokens.im_patch_id), mask

    @torch.no_grad()
    def _generate(
        self,
        images: list[Image.Image],
        instructions: list[str],
        template: str,
        max_new_tokens: int,
        no_repeat_ngram_size: int,
        collect_img: bool,
        plain: bool = False,
    ):
        """plain: decode with plain LLaVA's embedding and head (the explain pass) when the model has them."""
        cfg = self.config
        rows = self.prompt_rows(instructions, template)
        head = self.explain_head if plain else None
        embeds, mask = self.embed_prompts(images, rows, head.embed_tokens if head is not None else None)
        return greedy_generate(
            self.llm,
            embeds,
            mask,
            rows,
            max_new_tokens=max_new_tokens,
            no_repeat_ngram_size=no_repeat_ngram_size,
            min_new_tokens=min(cfg.generation.min_new_tokens, max_new_tokens),
            eos_id=cfg.tokens.eos_id,
            img_first_id=cfg.tokens.img_first_id if collect_img else None,
            num_img=cfg.tokens.num_img_tokens if collect_img else 0,
            embedding=head.embed_tokens if head is not None else None,
            head=head.lm_head if head is not None else None,
        )

    def _decode_text(self, token_ids: list[int]) -> str:
        """Text before [IMG0] / EOS. Special tokens stay in the text, as in the reference's
        `tokenizer.decode(out)` (remove_alter cuts only at </s> and [IMG0])."""
        stops = {self.config.tokens.eos_id, self.config.tokens.img_first_id}
        cut = next((i for i, t in enumerate(token_ids) if t in stops), len(token_ids))
        return self.tokenizer.decode(token_ids[:cut], skip_special_tokens=False)

    @torch.no_grad()
    def express(self, images: Sequence[Image.Image], instructions: Sequence[str]) -> Expression:
        """Stage 1: instruction + image -> concise expressive instruction and diffusion conditioning."""
        self._require(EXPRESS)
        images = check_images(images)
        instructions = self._check_instructions(images, instructions)
        cut = [self._truncate(t) for t in instructions]
        gen = self._generate(
            images,
            [c[0] for c in cut],
            self.config.prompt.edit_template,
            self.config.generation.max_new_tokens,
            self.config.generation.no_repeat_ngram_size,
            collect_img=True,
        )
        raw = [self._decode_text(t) for t in gen.token_ids]
        conditioning = self.edit_head(gen.img_states.to(self.dtype))  # (B, num_queries, C)
        return Expression(
            texts=[clean_expressive(r, self.config.generation) for r in raw],
            conditioning=conditioning,
            raw_texts=raw,
            found_img=gen.found_img,
            truncated=[c[1] for c in cut],
        )

    @torch.no_grad()
    def explain(self, images: Sequence[Image.Image], instructions: Sequence[str]) -> list[str]:
        """The summarizer pass's first step: a paragraph on what the edited image will be like.

        As the reference's process_data.ipynb: the explain prompt (two spaces before "(in a short
        paragraph)"), plain greedy decoding up to `explain_max_new_tokens` (1024) with no n-gram limit, on
        plain LLaVA's embedding and head when the checkpoint holds them (`llm.explain_vocab_size`), then
        the same two-sentence clean-up as the expressive instruction.
        """
        self._require(EXPRESS)
        images = check_images(images)
        instructions = self._check_instructions(images, instructions)
        cut = [self._truncate(t)[0] for t in instructions]
        g = self.config.generation
        gen = self._generate(
            images,
            cut,
            self.config.prompt.explain_template,
            g.explain_max_new_tokens,
            g.explain_no_repeat_ngram_size,
            collect_img=False,
            plain=True,
        )
        return [clean_expressive(self._decode_text(t), self.config.generation) for t in gen.token_ids]

    @torch.no_grad()
    def express_with_text(
        self, images: Sequence[Image.Image], instructions: Sequence[str], texts: Sequence[str]
    ) -> Expression:
        """Diffusion conditioning for a *given* expressive instruction (e.g. a summary) instead of a generated one.

        The MLLM reads the edit prompt, then the text as the assistant's answer, then [IMG0..n-1] -- the
        sequence MGIE is trained on -- and the edit head takes the last-layer states that predict the [IMG]
        tokens (the state before each one), as `MGIE.express` does for the text it generates itself.
        Returns an `Expression` whose `texts` are the given texts.
        """
        self._require(EXPRESS)
        images = check_images(images)
        instructions = self._check_instructions(images, instructions)
        texts = [t.strip() for t in check_texts(texts, len(images), "texts")]
        cfg = self.config
        cut = [self._truncate(t) for t in instructions]
        prompts = self.prompt_rows([c[0] for c in cut], cfg.prompt.edit_template)
        rows = [
            prompt + self.tokenizer(text, add_special_tokens=False)["input_ids"] + cfg.tokens.img_ids
            for prompt, text in zip(prompts, texts)
        ]
        embeds, mask = self.embed_prompts(images, rows)  # (B, T, H), (B, T); left-padded
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): left padding does not shift positions
        hidden = self.llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        n = cfg.tokens.num_img_tokens
        states = hidden[:, -(n + 1) : -1]  # (B, n, H): [IMG_k] sits at T - n + k, its predictor one before
        conditioning = self.edit_head(states.to(self.dtype))  # (B, num_queries, C)
        return Expression(
            texts=texts,
            conditioning=conditioning,
            raw_texts=list(texts),
            found_img=[True] * len(texts),
            truncated=[c[1] for c in cut],
        )

    # ------------------------------------------------------------------ stage 2: diffusion

    @torch.no_grad()
    def null_conditioning(self) -> torch.Tensor:
        return self.edit_head.null()  # (1, num_queries, C)

    @torch.no_grad()
    def sample(
        self,
        images: Sequence[Image.Image],
        conditioning: torch.Tensor,
        seeds: Sequence[int] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
        output_type: str = "pil",
        rng: str | None = None,
        strength: float | None = None,
    ):
        """Stage 2: edits `images` (RGB, one shared size) under `conditioning` (B, S, C), one seed per row.

        output_type "pil" -> list of PIL images; "np" -> (B, H, W, 3) float32 in [0, 1].
        rng: "cpu" (default: portable, batch-invariant) or "reference" (generators on the model's device,
        as the demo); None takes `config.sampler.rng`.
        """
        pixels = self._sample_pixels(
            images, conditioning, seeds, num_inference_steps, guidance_scale, image_guidance_scale, rng, strength
        )
        if output_type == "np":
            return to_float_images(pixels)
        if output_type == "pil":
            return to_pil(pixels)
        raise ValueError(f"output_type must be 'pil' or 'np', got {output_type!r}")

    def _sample_pixels(
        self,
        images,
        conditioning,
        seeds,
        num_inference_steps,
        guidance_scale,
        image_guidance_scale,
        rng,
        strength,
        image_latents: torch.Tensor | None = None,
        vae_pixels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The checks and the sampler's call shared by `sample` and `sample_and_reconstruct`: (B, 3, H, W)."""
        self._require(EDIT)
        images = check_images(images)
        s = self.config.sampler
        seeds = [s.seed] * len(images) if seeds is None else [int(x) for x in seeds]
        if len(seeds) != len(images):
            raise ValueError(f"seeds has {len(seeds)} entries but there are {len(images)} images")
        if (
            not isinstance(conditioning, torch.Tensor)
            or conditioning.dim() != 3
            or conditioning.shape[0] != len(images)
        ):
            shape = tuple(conditioning.shape) if isinstance(conditioning, torch.Tensor) else type(conditioning).__name__
            raise ValueError(f"conditioning must be a tensor (B={len(images)}, S, C); got {shape}")
        factor = self.config.vae.downscale
        bad = [i for i, img in enumerate(images) if img.width % factor or img.height % factor]
        if bad:
            raise ValueError(f"images {bad} have sizes not divisible by {factor}; use preprocess_image first")
        pixels = self._sampler(
            to_vae_pixels(images) if vae_pixels is None else vae_pixels,
            conditioning,
            self.null_conditioning(),
            seeds,
            num_inference_steps or s.num_inference_steps,
            s.guidance_scale if guidance_scale is None else guidance_scale,
            s.image_guidance_scale if image_guidance_scale is None else image_guidance_scale,
            s.rng if rng is None else rng,
            s.strength if strength is None else check_strength(strength),
            image_latents=image_latents,
        )
        return pixels

    @torch.no_grad()
    def sample_and_reconstruct(
        self,
        images: Sequence[Image.Image],
        conditioning: torch.Tensor,
        seeds: Sequence[int] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
        rng: str | None = None,
        strength: float | None = None,
    ) -> tuple[list[Image.Image], list[Image.Image]]:
        """`sample` (as PIL) and `reconstruct` of the same images, with one VAE encode for both: the sampler's
        image latents are the reconstruction's too, so the reference costs one decode."""
        self._require(EDIT)
        images = check_images(images)
        vae_pixels = to_vae_pixels(images)  # (B, 3, H, W) in [-1, 1], once for the sampler and the round trip
        latents = self._sampler.encode(vae_pixels)  # (B, C, h, w), unscaled
        pixels = self._sample_pixels(
            images,
            conditioning,
            seeds,
            num_inference_steps,
            guidance_scale,
            image_guidance_scale,
            rng,
            strength,
            image_latents=latents,
            vae_pixels=vae_pixels,
        )
        weight = next(self.vae.parameters())
        return to_pil(pixels), to_pil(self.vae.decode(latents.to(weight.dtype)).sample)  # (B, 3, H, W) -> PIL

    @torch.no_grad()
    def reconstruct(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        """The VAE's round trip of `images` (RGB, one shared size): what the edit of an image that asked for no
        change would look like. The difference between an edit and this is the model's edit alone, without the
        detail and colour the VAE cannot hold (pipeline.outputs.transfer_edit uses it as the reference)."""
        self._require(EDIT)
        images = check_images(images)
        latents = self._sampler.encode(to_vae_pixels(images))  # (B, C, h, w), unscaled
        weight = next(self.vae.parameters())
        return to_pil(self.vae.decode(latents.to(weight.dtype)).sample)  # (B, 3, H, W) -> PIL

    @torch.no_grad()
    def edit(
        self,
        images: Sequence[Image.Image],
        instructions: Sequence[str],
        seeds: Sequence[int] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
        rng: str | None = None,
        output_type: str = "pil",
        strength: float | None = None,
    ) -> EditResult:
        """Both stages: centre-crop/resize each image to the working resolution, express, then sample.
        output_type "np" gives `images` as (B, H, W, 3) float32 in [0, 1] (see `sample`)."""
        images = check_images(images)
        instructions = check_texts(instructions, len(images))
        seeds = [self.config.sampler.seed] * len(images) if seeds is None else [int(x) for x in seeds]
        work = [preprocess_image(img, self.config.sampler.resolution) for img in images]
        expr = self.express(work, instructions)
        out = self.sample(
            work,
            expr.conditioning,
            seeds,
            num_inference_steps,
            guidance_scale,
            image_guidance_scale,
            output_type=output_type,
            rng=rng,
            strength=strength,
        )
        return EditResult(images=out, expressive_instructions=expr.texts, seeds=seeds)


def seeded_component(config: MGIEConfig, name: str, seed: int) -> torch.nn.Module:
    """Component `name` with random weights from `seed`, drawn the same whichever other parts are built."""
    torch.manual_seed(seed * 7919 + _INIT_SEED_OFFSET[name])
    return build_component(config, name)


def share_img_rows(llm: torch.nn.Module, edit_head: EditHead, tokens) -> None:
    """The LLM's [IMG] rows := the head's, as in the reference checkpoint: this way round a model built with
    the edit part alone holds the same embeddings (its guidance null depends on them) without the LLM."""
    with torch.no_grad():
        llm.get_input_embeddings().weight[tokens.img_ids] = edit_head.img_embeds.to(llm.dtype)


def build_component(config: MGIEConfig, name: str) -> torch.nn.Module:
    if name == "vision":
        return VisionEncoder(config.vision, config.llm.hidden_size)
    if name == "llm":
        return build_llm(config.llm, config.tokens)
    if name == "edit_head":
        return EditHead(config.edit_head, config.tokens.num_img_tokens)
    if name == "unet":
        return build_unet(config.unet)
    if name == "vae":
        return build_vae(config.vae)
    if name == "explain":
        return ExplainHead(config.llm.explain_vocab_size, config.llm.hidden_size)
    raise ValueError(f"unknown component {name!r}")
