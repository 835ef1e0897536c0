"""InstructPix2Pix latent diffusion with batched 3-way classifier-free guidance.

One seed per row: each row draws its initial noise and its ancestral noise from its own generator, so a
batch of N rows gives exactly the pixels of N single edits. With rng "cpu" the generators live on the CPU,
so a seed gives the same noise on any device; with rng "reference" they live on the model's device, as
the demo's `torch.Generator(device='cuda')`, so official weights reproduce the demo's pixels there.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Sequence

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UNet2DConditionModel,
)

from .config import RNG_MODES, SchedulerConfig, UNetConfig, VAEConfig

SCHEDULERS = {
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "euler": EulerDiscreteScheduler,
    "ddim": DDIMScheduler,
    "dpm_solver": DPMSolverMultistepScheduler,
}


def build_scheduler(cfg: SchedulerConfig):
    try:
        cls = SCHEDULERS[cfg.name]
    except KeyError:
        raise ValueError(f"unknown scheduler {cfg.name!r}; known: {sorted(SCHEDULERS)}") from None
    params = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "name"}
    return cls.from_config(params)


def build_unet(cfg: UNetConfig) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=tuple(cfg.up_block_types),
    )


def build_vae(cfg: VAEConfig) -> AutoencoderKL:
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        latent_channels=cfg.latent_channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.sample_size,
        scaling_factor=cfg.scaling_factor,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
    )


def seeded_generators(
    seeds: Sequence[int], rng: str = "cpu", device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One generator per row: on the CPU ("cpu") or on the model's device ("reference")."""
    if rng not in RNG_MODES:
        raise ValueError(f"rng must be one of {RNG_MODES}, got {rng!r}")
    where = torch.device("cpu") if rng == "cpu" else torch.device(device)
    return [torch.Generator(where).manual_seed(int(s)) for s in seeds]


def initial_noise(generators: list[torch.Generator], shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    """One draw per row, each from its own generator, in `dtype` on the generator's device, then moved:
    diffusers' randn_tensor with a list of generators. shape is per row: (C, h, w) -> (B, C, h, w)"""
    rows = [torch.randn((1, *shape), generator=g, device=g.device, dtype=dtype) for g in generators]
    return torch.cat(rows).to(device)


def guidance_branches(guidance_scale: float, image_guidance_scale: float) -> int:
    """3 ([cond, null-text, null-all]) when guidance applies, else 1 (cond only).

    diffusers' InstructPix2Pix guides only when guidance_scale > 1 and image_guidance_scale >= 1; otherwise
    it runs the conditional branch alone, with the image latents and no guidance arithmetic.
    """
    return 3 if guidance_scale > 1.0 and image_guidance_scale >= 1.0 else 1


class InstructPix2PixSampler:
    """Runs the edit: image latents + conditioning -> edited pixels."""

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, scheduler_cfg: SchedulerConfig):
        self.unet, self.vae = unet, vae
        self.scheduler_cfg = scheduler_cfg

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> unscaled image latents (B, 4, H/f, W/f), the distribution's mode."""
        weight = next(self.vae.parameters())
        return self.vae.encode(pixels.to(weight.device, weight.dtype)).latent_dist.mode()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        weight = next(self.vae.parameters())
        latents = latents.to(weight.dtype) / self.vae.config.scaling_factor
        return self.vae.decode(latents).sample  # (B, 3, H, W)

    @torch.no_grad()
    def __call__(
        self,
        pixels: torch.Tensor,
        conditioning: torch.Tensor,
        null_conditioning: torch.Tensor,
        seeds: Sequence[int],
        num_inference_steps: int,
        guidance_scale: float,
        image_guidance_scale: float,
        rng: str = "cpu",
        strength: float = 1.0,
        image_latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """pixels (B, 3, H, W) in [-1, 1]; conditioning (B, S, C); null (1, S, C) -> pixels (B, 3, H, W)

        image_latents: `encode(pixels)` when the caller has it already (then the VAE encoder is not run again).

        strength 1 starts from pure noise (the reference). Below 1 the input's own latent, noised to the
        schedule's point `strength` of the way from clean to pure noise, is the start, and only that last part
        of the schedule runs (diffusers' img2img `strength`): a weak model stays near the photo."""
        weight = next(self.unet.parameters())
        device, dtype = weight.device, weight.dtype
        batch = pixels.shape[0]
        if conditioning.shape[0] != batch or len(seeds) != batch:
            raise ValueError(
                f"batch mismatch: {batch} images, {conditioning.shape[0]} conditionings, {len(seeds)} seeds"
            )
        scheduler = build_scheduler(self.scheduler_cfg)  # fresh per call: schedulers keep step state
        branches = guidance_branches(guidance_scale, image_guidance_scale)

        # 1. image latents, batched as [image, image, zeros] for [cond, null-text, null-all] (or [image] alone)
        image_latents = (self.encode(pixels) if image_latents is None else image_latents).to(dtype)  # (B, 4, h, w)
        latent_hw = image_latents.shape[-2:]
        cond = conditioning.to(device, dtype)  # (B, S, C)
        if branches == 3:
            image_latents = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])  # (3B, 4, h, w)
            # 2. conditioning batched the same way
            null = null_conditioning.to(device, dtype).expand(batch, -1, -1)
            text = torch.cat([cond, null, null])  # (3B, S, C)
        else:
            text = cond  # (B, S, C): no guidance, no null branches to compute

        # 3. timesteps and per-row initial noise (with strength < 1: the input's latent noised to the first step)
        scheduler.set_timesteps(num_inference_steps, device=device)
        generators = seeded_generators(seeds, rng, device)
        latent_shape = (self.vae.config.latent_channels, *latent_hw)
        noise = initial_noise(generators, latent_shape, device, dtype)  # (B, 4, h, w)
        timesteps = scheduler.timesteps
        if strength >= 1.0:
            latents = noise * scheduler.init_noise_sigma
        else:
            skip = num_inference_steps - max(1, min(num_inference_steps, int(num_inference_steps * strength)))
            timesteps = timesteps[skip * scheduler.order :]
            scheduler.set_begin_index(skip * scheduler.order)
            start = image_latents[:batch] * self.vae.config.scaling_factor  # the input's latent, as the target's
            latents = scheduler.add_noise(start, noise, timesteps[:1].repeat(batch))

        # 4. denoise (stochastic schedulers draw each row's noise from its generator, as diffusers does)
        step_kwargs = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}
        for t in timesteps:
            model_in = scheduler.scale_model_input(torch.cat([latents] * branches), t)
            model_in = torch.cat([model_in, image_latents], dim=1)  # (branches * B, 8, h, w)
            noise = self.unet(model_in, t, encoder_hidden_states=text, return_dict=False)[0]
            if branches == 3:
                noise_text, noise_image, noise_uncond = noise.chunk(3)
                noise = (
                    noise_uncond
                    + guidance_scale * (noise_text - noise_image)
                    + image_guidance_scale * (noise_image - noise_uncond)
                )
            latents = scheduler.step(noise, t, latents, return_dict=False, **step_kwargs)[0]

        # 5. decode
        return self.decode(latents)
