"""An exponential moving average of the weights that draw the edit (the edit head and the UNet).

A small model trained from scratch ends its schedule with weights that still jitter from batch to batch;
their average over the last few hundred steps samples more steadily (as diffusion models are shipped: the
EMA, not the last step). The checkpoint's model files hold the averaged weights, so `--model <checkpoint>`
and the export sample with them; the trainer state keeps the online (trained) weights, so a resume
continues training exactly where it stopped.
"""

from __future__ import annotations

import torch
from torch import nn


class WeightEMA:
    """ema = d * ema + (1 - d) * online after every optimizer step, d = min(decay, (1 + n) / (10 + n)):
    the warm-up keeps the early average from being dominated by the random start."""

    def __init__(self, modules: dict[str, nn.Module], decay: float, updates: int = 0):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {decay}")
        self.modules, self.decay, self.updates = modules, decay, updates
        self.shadow = {
            f"{name}.{k}": p.detach().clone()
            for name, m in modules.items()
            for k, p in m.named_parameters()
            if p.requires_grad
        }

    def _params(self):
        for name, m in self.modules.items():
            for k, p in m.named_parameters():
                key = f"{name}.{k}"
                if key in self.shadow:
                    yield key, p

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for key, p in self._params():
            self.shadow[key].lerp_(p.detach(), 1.0 - d)

    @torch.no_grad()
    def online(self) -> dict[str, torch.Tensor]:
        """The trained weights, as the trainer state keeps them."""
        return {key: p.detach().clone() for key, p in self._params()}

    @torch.no_grad()
    def swap(self) -> None:
        """Exchanges the online weights and the average in place (twice restores them)."""
        for key, p in self._params():
            tmp = p.detach().clone()
            p.copy_(self.shadow[key])
            self.shadow[key].copy_(tmp)

    @classmethod
    @torch.no_grad()
    def resumed(
        cls, modules: dict[str, nn.Module], decay: float, updates: int, online: dict[str, torch.Tensor]
    ) -> "WeightEMA":
        """From a checkpoint: its model files hold the average, its trainer state the online weights."""
        ema = cls(modules, decay, updates)  # shadow = the loaded (averaged) weights
        for key, p in ema._params():
            p.copy_(online[key])
        return ema
