"""MGIE's training objective (reference: apple/ml-mgie, end-to-end training) as one torch module.

    loss = L_ins + edit_weight * L_edit

L_ins: next-token cross-entropy over the assistant turn (the expressive instruction, [IMG0..n-1], </s>),
teacher-forced, with the input image's CLIP features spliced into the prompt exactly as at inference.
L_edit: epsilon-MSE of the InstructPix2Pix UNet at a random DDPM timestep (velocity-MSE when the model's
scheduler says `v_prediction`, as mgie-tiny's does). The target latent is
`vae.encode(goal).latent_dist.sample() * scaling_factor`; the input image's latent is the unscaled mode,
concatenated on the channel axis; the conditioning is the edit head applied to the last-layer states that
predict [IMG0..n-1], taken from the same teacher-forced forward (no generation during training).

Switches (the paper's ablations):
    mode e2e  both losses train the MLLM's trainable parts (embed_tokens, lm_head)
    mode ft   the MLLM learns from L_ins only: the states reach the edit head detached
    mode fz   the MLLM is frozen entirely; only the edit head and the UNet learn
    ins_loss  False drops L_ins from the total (it is still computed and logged)
    lgie      language-only: the prompt carries no image tokens, the vision tower is not run

Trainable (reference): embed_tokens, lm_head, edit head, the whole UNet. Frozen: the LLaMA blocks (gradients
pass through them to embed_tokens), CLIP, the projector, the VAE.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .images import to_clip_pixels, to_vae_pixels
from .mllm import splice_image_features
from .prompt import chat_prompt, image_placeholder

IGNORE = -100  # label of a position that is not trained (prompt, padding)


class Mode(str, enum.Enum):
    E2E = "e2e"
    FT = "ft"
    FZ = "fz"


@dataclass(frozen=True)
class ObjectiveConfig:
    """What the loss trains; the defaults are the reference's end-to-end objective."""

    mode: Mode = Mode.E2E
    ins_loss: bool = True
    lgie: bool = False
    edit_weight: float = 0.5
    # the LLaMA blocks learn too (wherever embed_tokens does): for a model trained from scratch, which has no
    # pretrained LLM to keep; the reference freezes them because its Vicuna blocks are already trained
    llm_blocks: bool = False
    # classifier-free-guidance dropout, from one uniform draw p per row (InstructPix2Pix's training recipe):
    # p < null_text: null text only; null_text <= p < null_both: both; null_both <= p < null_image: image only
    null_text: float = 0.05
    null_both: float = 0.10
    null_image: float = 0.15
    # min-SNR-gamma loss weighting (Hang et al. 2023): each row's L_edit weighted by min(SNR, gamma) over what
    # the target makes of SNR (SNR + 1 for the velocity, SNR for the noise), so the low-noise steps, which are
    # easy, stop dominating the gradient; 0 = off (the reference: a plain MSE)
    min_snr_gamma: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "mode", Mode(self.mode))
        if not 0 <= self.null_text <= self.null_both <= self.null_image <= 1:
            raise ValueError(
                f"dropout thresholds must satisfy 0 <= null_text <= null_both <= null_image <= 1; got "
                f"{self.null_text}, {self.null_both}, {self.null_image}"
            )

    @property
    def trains_mllm_on_ins(self) -> bool:
        return self.ins_loss and self.mode in (Mode.E2E, Mode.FT)

    @property
    def trains_mllm_on_edit(self) -> bool:
        return self.mode == Mode.E2E

    @property
    def mllm_needs_grad(self) -> bool:
        return self.trains_mllm_on_ins or self.trains_mllm_on_edit


@dataclass
class TrainBatch:
    """One teacher-forced batch, right-padded. Images are RGB at the diffusion resolution, one size."""

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long
    labels: torch.Tensor  # (B, T) long, IGNORE outside the assistant turn (text, [IMG0..n-1], </s>)
    lengths: torch.Tensor  # (B,) tokens per row before padding
    clip_pixels: torch.Tensor | None  # (B, 3, S, S) CLIP-normalised; None for LGIE
    input_pixels: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    goal_pixels: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    keys: tuple[str, ...] | None = None  # one stable name per row: what FrozenFeatures remembers it by

    def to(self, device) -> "TrainBatch":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return TrainBatch(**moved)


class FrozenFeatures:
    """What the frozen parts (CLIP and the projector, the VAE's encoder) make of each training row, computed
    the first time the row is seen and reused every later epoch: the same values, without the cost (at
    mgie-tiny's size the two VAE encodes are a third of a step's forward). The VAE's goal distribution is
    kept as mean and std, so each step still draws its own sample. Values live on the device they were made on."""

    def __init__(self):
        self._rows: dict[tuple[str, str], tuple[torch.Tensor, ...]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, name: str, keys: Sequence[str] | None, compute) -> tuple[torch.Tensor, ...]:
        """compute() -> tensors with the batch first; one call per batch that holds any row not seen yet."""
        if keys is None:
            return compute()
        if all((name, k) in self._rows for k in keys):
            return tuple(torch.stack(parts) for parts in zip(*(self._rows[(name, k)] for k in keys)))
        out = compute()
        for i, k in enumerate(keys):
            self._rows[(name, k)] = tuple(t[i].detach() for t in out)
        return out


@dataclass
class LossOutput:
    loss: torch.Tensor  # () what backward runs on
    ins: torch.Tensor  # () L_ins, always computed (logged even when not trained)
    edit: torch.Tensor  # () L_edit
    null_text: int  # rows whose text conditioning was dropped
    null_image: int  # rows whose image latent was dropped


def build_batch(
    model,
    inputs: Sequence[Image.Image],
    goals: Sequence[Image.Image],
    instructions: Sequence[str],
    expressive: Sequence[str],
    lgie: bool = False,
    keys: Sequence[str] | None = None,
) -> TrainBatch:
    """Tokenises prompt + expressive instruction + [IMG0..n-1] per row, as `express_with_text` lays them out.

    `model` is an MGIE with the tokenizer loaded; instructions are truncated as at inference.
    """
    cfg = model.config
    if not (len(inputs) == len(goals) == len(instructions) == len(expressive)):
        raise ValueError(
            f"batch fields differ in length: {len(inputs)} inputs, {len(goals)} goals, "
            f"{len(instructions)} instructions, {len(expressive)} expressive instructions"
        )
    placeholder = "" if lgie else image_placeholder(cfg.tokens, cfg.vision.num_patches)
    rows, labels = [], []
    for instruction, text in zip(instructions, expressive):
        instruction = model._truncate(instruction)[0]
        prompt = model.tokenizer(
            chat_prompt(cfg.prompt, cfg.prompt.edit_template.format(instruction=instruction), placeholder)
        )["input_ids"]
        # the reference's assistant turn ends with the separator </s> after [IMG7], and trains it as a label
        answer = (
            model.tokenizer(text.strip(), add_special_tokens=False)["input_ids"]
            + cfg.tokens.img_ids
            + [cfg.tokens.eos_id]
        )
        rows.append(prompt + answer)
        labels.append([IGNORE] * len(prompt) + answer)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), cfg.tokens.pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    target = torch.full((len(rows), width), IGNORE, dtype=torch.long)  # (B, T)
    for i, (row, lab) in enumerate(zip(rows, labels)):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        target[i, : len(row)] = torch.tensor(lab)
    return TrainBatch(
        input_ids=ids,
        attention_mask=mask,
        labels=target,
        lengths=mask.sum(dim=1),
        clip_pixels=None if lgie else to_clip_pixels(list(inputs), cfg.vision),
        input_pixels=to_vae_pixels(list(inputs)),
        goal_pixels=to_vae_pixels(list(goals)),
        keys=tuple(keys) if keys is not None else None,
    )


def cfg_dropout(p: torch.Tensor, cfg: ObjectiveConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform draws p (B,) -> (null_text, null_image) boolean masks (B,), the reference's three bands."""
    null_text = p < cfg.null_both  # [0, null_text): text only; [null_text, null_both): both
    null_image = (p >= cfg.null_text) & (p < cfg.null_image)  # both, then image only
    return null_text, null_image


def apply_head(head: nn.Module, states: torch.Tensor, img_embeds: torch.Tensor) -> torch.Tensor:
    """EditHead.forward with the [IMG] embeddings given: in training they are the LLM's own embed_tokens
    rows (trained with it), not the head's stored copy. states (B, n, H), img_embeds (n, H) -> (B, Q, C)"""
    hid = head.llm2hid(states + img_embeds.unsqueeze(0))  # (B, n, d_model)
    queries = head.query.expand(states.shape[0], -1, -1)  # (B, Q, d_model)
    return head.hid2feat(head.mapper(hid, queries))  # (B, Q, C)


TRAINABLE_PREDICTIONS = ("epsilon", "v_prediction")


class MGIETrainModule(nn.Module):
    """The trainable view of an MGIE model: its components as submodules (for DDP and the optimizer) and
    the objective as `forward`. Construction sets requires_grad and train/eval modes per the config."""

    def __init__(self, model, objective: ObjectiveConfig, frozen_cache: bool = False):
        super().__init__()
        from diffusers import DDPMScheduler

        if model.llm is None or model.unet is None or model.tokenizer is None:
            raise ValueError(f"training needs the whole model; this one holds parts {sorted(model.parts)}")
        self.model = model  # not a submodule: MGIE is a plain object; the components below are
        self.objective = objective
        self.vision, self.llm, self.edit_head, self.unet, self.vae = (
            model.vision,
            model.llm,
            model.edit_head,
            model.unet,
            model.vae,
        )
        s = model.config.scheduler
        # training noise schedule: the sampler's betas with DDPM's forward process
        self.noise_schedule = DDPMScheduler(
            num_train_timesteps=s.num_train_timesteps,
            beta_start=s.beta_start,
            beta_end=s.beta_end,
            beta_schedule=s.beta_schedule,
            prediction_type=s.prediction_type,
        )
        if s.prediction_type not in TRAINABLE_PREDICTIONS:  # refused before the first step, not at it
            raise ValueError(
                f"training supports prediction_type {' or '.join(map(repr, TRAINABLE_PREDICTIONS))}, "
                f"not {s.prediction_type!r}"
            )
        set_trainable(self, objective)
        # the frozen parts' outputs per row (FrozenFeatures), when the batches carry row keys
        self.frozen = FrozenFeatures() if frozen_cache else None

    def _frozen(self, name: str, batch: TrainBatch, compute) -> tuple[torch.Tensor, ...]:
        if self.frozen is None:
            return compute()
        return self.frozen.get(name, batch.keys, compute)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def prepare_to_save(self) -> None:
        """Copies the LLM's trained [IMG] rows into the head's stored copy (what inference and the
        checkpoint's `emb` use)."""
        with torch.no_grad():
            ids = self.model.config.tokens.img_ids
            self.edit_head.img_embeds.copy_(self.llm.get_input_embeddings().weight[ids])

    def teacher_forced(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The MLLM over prompt + answer. -> L_ins (), [IMG]-predicting states (B, n, H), [IMG] rows (n, H)

        No graph is built through the MLLM when none of its weights learns (fz; ft without L_ins).
        """
        cfg, obj = self.model.config, self.objective
        n = cfg.tokens.num_img_tokens
        with torch.set_grad_enabled(torch.is_grad_enabled() and obj.mllm_needs_grad):
            embeds = self.llm.get_input_embeddings()(batch.input_ids)  # (B, T, H)
            if batch.clip_pixels is not None:
                with torch.no_grad():  # CLIP and the projector are frozen
                    (features,) = self._frozen("clip", batch, lambda: (self.vision(batch.clip_pixels),))  # (B, P, H)
                embeds = splice_image_features(embeds, batch.input_ids, features, cfg.tokens.im_patch_id)
            hidden = self.llm.model(inputs_embeds=embeds, attention_mask=batch.attention_mask).last_hidden_state
            img_embeds = self.llm.get_input_embeddings().weight[cfg.tokens.img_ids]  # (n, H)

        # L_ins over the assistant turn: logits only where a label is trained (the 7B vocab is wide)
        targets = batch.labels[:, 1:]  # (B, T-1): the state at t predicts token t+1
        where = targets != IGNORE
        picked = hidden[:, :-1][where]  # (N, H)
        if not obj.trains_mllm_on_ins:
            picked = picked.detach()
        ins = F.cross_entropy(self.llm.lm_head(picked).float(), targets[where])

        # the states that predict [IMG0..n-1]: [IMG_k] sits at length - n - 1 + k (right padding; </s> is last)
        offsets = torch.arange(n, device=hidden.device)
        index = (batch.lengths[:, None] - n - 2 + offsets[None]).clamp(min=0)  # (B, n)
        states = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, n, H)
        if not obj.trains_mllm_on_edit:
            states, img_embeds = states.detach(), img_embeds.detach()
        return ins, states, img_embeds

    def forward(self, batch: TrainBatch, generator: torch.Generator) -> LossOutput:
        """`generator` (CPU) draws timesteps, noise, the VAE sample and the dropout: a seeded step replays."""
        obj = self.objective
        device = next(self.unet.parameters()).device
        batch = batch.to(device)

        # 1-2. teacher-forced MLLM forward and L_ins
        ins, states, img_embeds = self.teacher_forced(batch)

        # 3. edit-head conditioning, and the guidance null from the same [IMG] rows
        head_dtype = self.edit_head.llm2hid.weight.dtype
        cond = apply_head(self.edit_head, states.to(head_dtype), img_embeds.to(head_dtype))  # (B, Q, C)
        null = apply_head(
            self.edit_head, torch.zeros_like(states[:1], dtype=head_dtype), img_embeds.to(head_dtype)
        )  # (1, Q, C)

        # 4. latents: the goal sampled and scaled (the diffusion target), the input's mode unscaled
        weight = next(self.vae.parameters())

        def encode():
            goal = self.vae.encode(batch.goal_pixels.to(weight.dtype)).latent_dist
            image = self.vae.encode(batch.input_pixels.to(weight.dtype)).latent_dist.mode()  # (B, 4, h, w)
            return goal.mean, goal.std, image

        with torch.no_grad():
            goal_mean, goal_std, image_latents = self._frozen("vae", batch, encode)
            eps = torch.randn(goal_mean.shape, generator=generator, dtype=torch.float32)  # (B, 4, h, w)
            latents = (goal_mean + goal_std * eps.to(device, goal_mean.dtype)) * self.vae.config.scaling_factor

        # 5. DDPM forward process at a random timestep per row, guidance dropout, epsilon target
        b = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(device, latents.dtype)
        timesteps = torch.randint(0, self.noise_schedule.config.num_train_timesteps, (b,), generator=generator)
        null_text, null_image = cfg_dropout(torch.rand(b, generator=generator), obj)
        null_text, null_image, timesteps = null_text.to(device), null_image.to(device), timesteps.to(device)
        noisy = self.noise_schedule.add_noise(latents, noise, timesteps)  # (B, 4, h, w)
        cond = torch.where(null_text[:, None, None], null.expand_as(cond), cond)
        image_latents = torch.where(null_image[:, None, None, None], torch.zeros_like(image_latents), image_latents)
        unet_dtype = next(self.unet.parameters()).dtype
        model_in = torch.cat([noisy, image_latents], dim=1).to(unet_dtype)  # (B, 8, h, w)
        pred = self.unet(model_in, timesteps, encoder_hidden_states=cond.to(unet_dtype), return_dict=False)[0]
        per_row = (pred.float() - self._target(latents, noise, timesteps).float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
        edit = (per_row * self._snr_weight(timesteps)).mean()

        loss = obj.edit_weight * edit + (ins if obj.trains_mllm_on_ins else 0.0)
        return LossOutput(
            loss=loss,
            ins=ins.detach(),
            edit=edit.detach(),
            null_text=int(null_text.sum()),
            null_image=int(null_image.sum()),
        )

    def _snr_weight(self, timesteps: torch.Tensor) -> torch.Tensor:
        """(B,) min-SNR-gamma weights per row; ones when the objective does not weight."""
        gamma = self.objective.min_snr_gamma
        if gamma <= 0:
            return torch.ones(timesteps.shape, device=timesteps.device)
        alpha_bar = self.noise_schedule.alphas_cumprod.to(timesteps.device)[timesteps].float()  # (B,)
        snr = alpha_bar / (1 - alpha_bar)
        velocity = self.noise_schedule.config.prediction_type == "v_prediction"
        return snr.clamp(max=gamma) / (snr + 1 if velocity else snr)

    def _target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet predicts, as the model's scheduler reads it: the noise (the reference), or the velocity
        sqrt(a) * noise - sqrt(1 - a) * latents. With epsilon, an error at the noisiest steps reaches the image
        multiplied by 1 / sqrt(a) (about 14 at t = 999): a small model trained from scratch then denoises a
        noised goal well yet samples badly from pure noise; the velocity target weighs those steps fairly."""
        if self.noise_schedule.config.prediction_type == "v_prediction":
            return self.noise_schedule.get_velocity(latents, noise, timesteps)
        return noise


def set_trainable(module: MGIETrainModule, objective: ObjectiveConfig) -> None:
    """requires_grad and train/eval per the reference split and the ablation switches."""
    module.requires_grad_(False)
    module.eval()
    embed, head = module.llm.get_input_embeddings(), module.llm.lm_head
    # embed_tokens learns from whichever loss reaches the MLLM; lm_head only from L_ins
    embed.weight.requires_grad_(objective.mllm_needs_grad)
    head.weight.requires_grad_(objective.trains_mllm_on_ins)
    if objective.llm_blocks and objective.mllm_needs_grad:
        module.llm.model.layers.requires_grad_(True)
        module.llm.model.norm.requires_grad_(True)
    module.edit_head.requires_grad_(True)
    # the head's stored [IMG] copy is derived from embed_tokens (prepare_to_save), never trained itself
    module.edit_head.img_embeds.requires_grad_(False)
    module.unet.requires_grad_(True)
    module.edit_head.train()
    module.unet.train()


def expected_trainable(objective: ObjectiveConfig) -> set[str]:
    """Component groups that receive gradients under `objective` (documentation and tests)."""
    groups = {"edit_head", "unet"}
    if objective.mllm_needs_grad:
        groups.add("embed_tokens")
    if objective.trains_mllm_on_ins:
        groups.add("lm_head")
    if objective.llm_blocks and objective.mllm_needs_grad:
        groups.add("llama_blocks")
    return groups
