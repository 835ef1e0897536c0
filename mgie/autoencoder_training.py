"""The first stage of training a model from scratch: its VAE as an autoencoder.

A latent diffusion model edits in the VAE's latent space, so the VAE must reconstruct photos before the UNet
can learn anything there. The reference starts from Stable Diffusion's trained VAE; a model trained here
(mgie-tiny) has none, so `mgie-batch train --stage autoencoder` trains it first, on the same triplet shards
(inputs and goals alike), with everything else frozen. The loss is Stable Diffusion's autoencoder loss
without the adversarial and perceptual terms, which a 64 px model does not need: L1 + MSE of the
reconstruction from a latent sample, plus a small KL term that keeps the latents near a unit Gaussian.

The diffusion stage then needs latents of unit variance (`scaling_factor`, 0.18215 for Stable Diffusion's
VAE): this stage measures the latent standard deviation as it trains and stores 1 / std in the checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .training import LossOutput, TrainBatch


class AutoencoderTrainModule(nn.Module):
    """The VAE of an MGIE model as the only learner; `forward` has MGIETrainModule's signature so the same
    training loop, checkpoints and resume serve both stages."""

    def __init__(self, model, kl_weight: float = 1e-4, std_momentum: float = 0.99):
        super().__init__()
        self.model = model  # the whole MGIE is saved at each checkpoint; only its VAE changes
        self.vae = model.vae
        self.kl_weight = kl_weight
        self.std_momentum = std_momentum
        # running std of the latent samples, from the stored factor (a resumed run continues its estimate)
        self.register_buffer("latent_std", torch.tensor(1.0 / model.config.vae.scaling_factor))
        for component in (model.vision, model.llm, model.edit_head, model.unet):
            if component is not None:
                component.requires_grad_(False).eval()
        self.vae.requires_grad_(True).train()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.vae.parameters() if p.requires_grad]

    def prepare_to_save(self) -> None:
        """1 / latent std becomes the scaling factor the sampler and the diffusion stage divide by."""
        factor = float(1.0 / self.latent_std.clamp(min=1e-6))
        self.vae.register_to_config(scaling_factor=factor)
        self.model.config.vae.scaling_factor = factor

    def forward(self, batch: TrainBatch, generator: torch.Generator) -> LossOutput:
        weight = next(self.vae.parameters())
        pixels = torch.cat([batch.input_pixels, batch.goal_pixels]).to(weight.device, weight.dtype)  # (2B, 3, H, W)
        posterior = self.vae.encode(pixels).latent_dist
        eps = torch.randn(posterior.mean.shape, generator=generator, dtype=torch.float32)  # (2B, 4, h, w)
        latents = posterior.mean + posterior.std * eps.to(weight.device, posterior.mean.dtype)
        recon = self.vae.decode(latents).sample  # (2B, 3, H, W)
        l1 = F.l1_loss(recon.float(), pixels.float())
        mse = F.mse_loss(recon.float(), pixels.float())
        kl = posterior.kl().mean() / latents[0].numel()  # per latent element, comparable across sizes
        with torch.no_grad():
            self.latent_std.mul_(self.std_momentum).add_((1 - self.std_momentum) * latents.detach().float().std())
        loss = l1 + mse + self.kl_weight * kl
        zero = torch.zeros((), device=loss.device)
        return LossOutput(loss=loss, ins=zero, edit=(l1 + mse).detach(), null_text=0, null_image=0)
