"""Typed configuration of the MGIE model, with named presets.

Every number that the reference implementation hard-codes (token ids, layer choice, prompt text, sampler
defaults) is a field here, so a preset is the whole description of a model. `tiny` is a seeded random
model small enough for CPU tests; `mgie-7b` has the real sizes (LLaVA-7B v1, CLIP ViT-L/14 at 224 px,
SD-1.5 UNet with 8 input channels).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

RNG_MODES = ("cpu", "reference")
CLEAN_STYLES = ("reference", "tidy")

# The section dataclasses below share one shape line by line (a typed field and its default), as do
# mgie.summarizer.config's: deliberate. Each line is a different number of one part of the model, the way
# transformers' configuration classes spell them; there is no logic in them to share.


@dataclass
class VisionConfig:
    """CLIP ViT vision tower; features come from `select_layer` with the CLS token dropped."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    projection_dim: int = 768
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    select_layer: int = -2
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class LLMConfig:
    """LLaMA decoder. `vocab_size` includes the 3 image tokens and the [IMG] tokens."""

    vocab_size: int = 32011
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # > 0: the checkpoint also holds plain LLaVA's own embed_tokens / lm_head (this many rows: the base vocab
    # + the 3 image tokens, no [IMG]); `MGIE.explain` decodes with them, as the reference's summarizer pass
    # ran the plain LLaVA-7B-v1. 0: explain uses MGIE's trained embedding and head (presets).
    explain_vocab_size: int = 0


@dataclass
class TokenConfig:
    """Special token ids, as the reference checkpoint lays them out."""

    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = 0
    im_patch_id: int = 32000
    im_start_id: int = 32001
    im_end_id: int = 32002
    img_first_id: int = 32003  # [IMG0]; [IMG0..IMGn-1] are consecutive
    num_img_tokens: int = 8
    im_patch: str = "<im_patch>"
    im_start: str = "<im_start>"
    im_end: str = "<im_end>"

    @property
    def img_ids(self) -> list[int]:
        return list(range(self.img_first_id, self.img_first_id + self.num_img_tokens))

    @property
    def img_tokens(self) -> list[str]:
        return [f"[IMG{i}]" for i in range(self.num_img_tokens)]


@dataclass
class PromptConfig:
    """vicuna_v1_1 chat template and the reference user texts."""

    system: str = (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    )
    user_role: str = "USER"
    assistant_role: str = "ASSISTANT"
    sep: str = " "
    edit_template: str = "what will this image be like if '{instruction}'"
    # two spaces before the parenthesis: the reference's summarizer-pass prompt has them (process_data.ipynb)
    explain_template: str = "what will this image be like if '{instruction}'  (in a short paragraph)"


@dataclass
class GenerationConfig:
    """Greedy decoding of the expressive instruction (and of the longer 'explain' paragraph)."""

    max_new_tokens: int = 96
    min_new_tokens: int = 0  # EOS is banned before this many tokens (benchmarks fix the answer length)
    no_repeat_ngram_size: int = 3
    keep_sentences: int = 2  # the reference keeps the first two sentences
    cut_markers: tuple[str, ...] = ("alternative",)  # text from such a word on is dropped (reference)
    # "reference": remove_alter's exact text ('.'.join of the stripped sentences, no space after the period);
    # "tidy": sentences joined with ". " and whitespace runs collapsed (reads better, differs from the demo)
    clean_style: str = "reference"
    explain_max_new_tokens: int = 1024
    explain_no_repeat_ngram_size: int = 0  # the reference explains with no n-gram limit (plain greedy)
    max_instruction_tokens: int = 128  # longer instructions are truncated (and the row says so)


@dataclass
class EditHeadConfig:
    """EditMapper: 8 [IMG] states -> sequence of diffusion conditioning vectors."""

    llm_hidden_size: int = 4096
    d_model: int = 512
    num_heads: int = 4
    num_encoder_layers: int = 4
    num_decoder_layers: int = 4
    dim_feedforward: int = 2048
    num_queries: int = 77
    out_dim: int = 768


@dataclass
class UNetConfig:
    """InstructPix2Pix UNet: 8 input channels = noisy latent (4) + input-image latent (4)."""

    in_channels: int = 8
    out_channels: int = 4
    sample_size: int = 64
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    cross_attention_dim: int = 768
    attention_head_dim: int = 8
    norm_num_groups: int = 32
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )
    up_block_types: tuple[str, ...] = (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    )


@dataclass
class VAEConfig:
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    sample_size: int = 512
    scaling_factor: float = 0.18215

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class SchedulerConfig:
    """Sampling scheduler; `name` picks the diffusers class (see mgie.sampler.SCHEDULERS)."""

    name: str = "euler_ancestral"
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    steps_offset: int = 1
    # InstructPix2Pix's scheduler_config.json has no timestep_spacing key, so the reference demo runs with
    # diffusers' default for Euler-Ancestral: linspace (100 steps: 999, 988.9, ..., 0; init sigma 14.615)
    timestep_spacing: str = "linspace"


@dataclass
class SamplerConfig:
    """Per-job sampler defaults (reference demo values)."""

    num_inference_steps: int = 100
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5
    # 1: sample from pure noise (the reference); below 1: from the input's latent noised that far along the
    # schedule, running only that part of it (img2img). A model's own default, chosen on validation photos
    strength: float = 1.0
    # what a full-size output takes the photo's finer detail relative to (pipeline.outputs.transfer_edit):
    # "input", the working-size photo; or "reconstruction", the VAE's round trip of it, which also cancels the
    # VAE's own blur and colour error where the edit changes nothing (one more VAE pass per row)
    detail_reference: str = "input"
    resolution: int = 512
    seed: int = 13331
    # "cpu": one CPU generator per row (the same noise on any device, batch-invariant);
    # "reference": one generator per row on the model's device, drawn in the model dtype exactly as diffusers'
    # randn_tensor draws with a list of generators (the demo's pixels on its GPU; differs across devices)
    rng: str = "cpu"


def check_strength(strength: float) -> float:
    """The sampler's img2img strength: in (0, 1], 1 = from pure noise."""
    if not 0.0 < float(strength) <= 1.0:
        raise ValueError(f"strength must lie in (0, 1] (1 = sample from pure noise), got {strength}")
    return float(strength)


DETAIL_REFERENCES = ("input", "reconstruction")


def check_detail_reference(name: str) -> str:
    if name not in DETAIL_REFERENCES:
        raise ValueError(f"--detail-reference must be one of {', '.join(DETAIL_REFERENCES)}, got {name!r}")
    return name


@dataclass
class MGIEConfig:
    name: str = "mgie-7b"
    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    tokens: TokenConfig = field(default_factory=TokenConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    edit_head: EditHeadConfig = field(default_factory=EditHeadConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def validate(self) -> "MGIEConfig":
        t, llm, eh = self.tokens, self.llm, self.edit_head
        if t.img_first_id + t.num_img_tokens > llm.vocab_size:
            raise ValueError(
                f"[IMG] ids {t.img_first_id}..{t.img_first_id + t.num_img_tokens - 1} do not fit in "
                f"vocab_size {llm.vocab_size}"
            )
        if llm.explain_vocab_size and not t.im_end_id < llm.explain_vocab_size <= llm.vocab_size:
            raise ValueError(
                f"llm.explain_vocab_size {llm.explain_vocab_size} must cover the image tokens "
                f"(> {t.im_end_id}) and be <= vocab_size {llm.vocab_size}"
            )
        if eh.llm_hidden_size != llm.hidden_size:
            raise ValueError(f"edit_head.llm_hidden_size {eh.llm_hidden_size} != llm.hidden_size {llm.hidden_size}")
        if eh.out_dim != self.unet.cross_attention_dim:
            raise ValueError(
                f"edit_head.out_dim {eh.out_dim} != unet.cross_attention_dim {self.unet.cross_attention_dim}"
            )
        if self.sampler.rng not in RNG_MODES:
            raise ValueError(f"sampler.rng must be one of {RNG_MODES}, got {self.sampler.rng!r}")
        if self.generation.clean_style not in CLEAN_STYLES:
            raise ValueError(
                f"generation.clean_style must be one of {CLEAN_STYLES}, got {self.generation.clean_style!r}"
            )
        latent = self.vae.latent_channels
        if (self.unet.in_channels, self.unet.out_channels) != (2 * latent, latent):
            raise ValueError(
                f"unet in/out channels {self.unet.in_channels}/{self.unet.out_channels} must be "
                f"{2 * latent}/{latent}: the noisy latent and the input image's latent "
                f"(vae.latent_channels {latent}) in, a latent out"
            )
        if self.sampler.resolution % self.vae.downscale:
            raise ValueError(f"sampler.resolution {self.sampler.resolution} is not a multiple of {self.vae.downscale}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MGIEConfig":
        return _from_dict(cls, data).validate()

    def replace(self, **sections: Any) -> "MGIEConfig":
        return dataclasses.replace(self, **sections).validate()


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Builds a (nested) dataclass from a dict; unknown keys are an error, so a typo never passes silently."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {unknown}")
    kwargs = {}
    for name, value in data.items():
        default = known[name].default_factory if known[name].default_factory is not dataclasses.MISSING else None
        sub = default() if default is not None else None
        if dataclasses.is_dataclass(sub):
            kwargs[name] = _from_dict(type(sub), value)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


# The small presets use the in-process tokenizer (mgie.tokenizer.build_tiny_tokenizer): exactly this many
# pieces, then <im_patch>/<im_start>/<im_end>, then [IMG0..7], mirroring the real id layout.
IN_PROCESS_VOCAB = 300


def in_process_tokens(v: int = IN_PROCESS_VOCAB) -> TokenConfig:
    """The markers right after an in-process tokenizer's `v` pieces."""
    return TokenConfig(im_patch_id=v, im_start_id=v + 1, im_end_id=v + 2, img_first_id=v + 3)


def _small_vision(hidden: int, layers: int) -> VisionConfig:
    return VisionConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=hidden,
    )


def _small_llm(hidden: int, layers: int) -> LLMConfig:
    return LLMConfig(
        vocab_size=IN_PROCESS_VOCAB + 3 + 8,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=512,
    )


def _tiny() -> MGIEConfig:
    """Seeded random weights at 32 px: tests and smoke runs."""
    return MGIEConfig(
        name="tiny",
        vision=_small_vision(hidden=32, layers=3),
        llm=_small_llm(hidden=32, layers=2),
        tokens=in_process_tokens(),
        generation=GenerationConfig(max_new_tokens=16, explain_max_new_tokens=24, max_instruction_tokens=64),
        edit_head=EditHeadConfig(
            llm_hidden_size=32,
            d_model=32,
            num_heads=2,
            num_encoder_layers=1,
            num_decoder_layers=1,
            dim_feedforward=64,
            num_queries=77,
            out_dim=32,
        ),
        unet=UNetConfig(
            sample_size=16,
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        ),
        vae=VAEConfig(block_out_channels=(32, 64), layers_per_block=1, sample_size=32),
        sampler=SamplerConfig(num_inference_steps=4, resolution=32, seed=13331),
    )


def _mgie_tiny() -> MGIEConfig:
    """The MGIE architecture at sizes a laptop CPU edits with in about a second (64 px, 20 steps), trained by
    `make train-tiny` on procedural global edits (docs/training.md). Unlike `tiny` it is meant to be trained:
    its text budget fits the expressive sentences. The VAE downsamples by 4 (16 x 16 latents at 64 px), which
    keeps 20 CPU denoising steps cheap; by 2 the UNet would cost four times as much. Its latents have 16
    channels, not Stable Diffusion's 4: at this size 4 channels keep too little of a photo (measured: held-out
    reconstruction L1 0.082 with 4 against 0.057 with 16 after the same 400 steps, when an edit must land
    within ~0.05-0.1 of its goal; docs/training.md). 3.2 M parameters in all (1.5 M of them the UNet's)."""
    latent_channels = 16
    return MGIEConfig(
        name="mgie-tiny",
        vision=_small_vision(hidden=64, layers=2),
        llm=_small_llm(hidden=128, layers=3),
        tokens=in_process_tokens(),
        # the procedural expressive sentences are 39-62 pieces of the in-process tokenizer, + 8 [IMG]. No n-gram
        # ban: the reference's 3-gram ban suits LLaMA's word pieces, but this tokenizer spells words in pieces of
        # one or two letters, so the ban forbids ordinary spellings already seen in the prompt (measured: with it
        # a trained model writes "T[IMG4][IMG5]..."; without it, its sentence)
        generation=GenerationConfig(
            max_new_tokens=80, explain_max_new_tokens=80, max_instruction_tokens=64, no_repeat_ngram_size=0
        ),
        # the vicuna_v1_1 template with a one-line system text: the in-process tokenizer spells the reference's
        # 170-character system text in ~160 pieces, half of every training sequence, which a model that learns
        # its LLM from scratch gains nothing from (measured: 311 -> ~150 tokens per row, the LLM's share of a
        # training step halved)
        prompt=PromptConfig(system="A chat about editing a photo."),
        edit_head=EditHeadConfig(
            llm_hidden_size=128,
            d_model=64,
            num_heads=4,
            num_encoder_layers=1,
            num_decoder_layers=1,
            dim_feedforward=128,
            num_queries=16,
            out_dim=64,
        ),
        unet=UNetConfig(
            sample_size=16,
            in_channels=2 * latent_channels,
            out_channels=latent_channels,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            cross_attention_dim=64,
            attention_head_dim=8,
            norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        ),
        # scaling_factor: set by the autoencoder stage of training to 1 / std of its latents
        vae=VAEConfig(
            block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=latent_channels, sample_size=64
        ),
        sampler=SamplerConfig(num_inference_steps=20, resolution=64, seed=13331),
        # velocity, not the reference's noise: trained from scratch with the epsilon target, this model denoised
        # a noised goal to L1 0.045 yet sampled from pure noise to 0.21 (docs/training.md)
        scheduler=SchedulerConfig(prediction_type="v_prediction"),
    )


PRESETS = {
    "tiny": _tiny,
    # the untrained start of mgie-tiny (training and tests); "mgie-tiny" itself names the shipped, trained
    # weights (mgie.shipped), which `MGIE.from_pretrained("mgie-tiny")` and `--model mgie-tiny` load
    "mgie-tiny-init": _mgie_tiny,
    "mgie-7b": MGIEConfig,
}


def preset(name: str) -> MGIEConfig:
    try:
        return PRESETS[name]().validate()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None
