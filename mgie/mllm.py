"""The LLaVA-v1-style multimodal LLM: CLIP vision tower, linear projector, LLaMA decoder.

The image enters the LLM as `num_patches` projected patch features that replace the `<im_patch>`
placeholder embeddings in the prompt.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from .config import LLMConfig, TokenConfig, VisionConfig


def clip_vision_config(cfg: VisionConfig) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.projection_dim,
        hidden_act=cfg.hidden_act,
        layer_norm_eps=cfg.layer_norm_eps,
    )


def llama_config(cfg: LLMConfig, tokens: TokenConfig) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        bos_token_id=tokens.bos_id,
        eos_token_id=tokens.eos_id,
        pad_token_id=tokens.pad_id,
        tie_word_embeddings=False,
    )


class VisionEncoder(nn.Module):
    """CLIP vision tower + projector -> (B, num_patches, llm_hidden) image tokens for the LLM."""

    def __init__(self, vision: VisionConfig, llm_hidden_size: int):
        super().__init__()
        self.cfg = vision
        self.tower = CLIPVisionModel(clip_vision_config(vision))
        self.projector = nn.Linear(vision.hidden_size, llm_hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.tower(pixel_values.to(self.projector.weight.dtype), output_hidden_states=True)
        # layer -2, CLS dropped: the LLaVA-v1 choice
        patches = out.hidden_states[self.cfg.select_layer][:, 1:]  # (B, num_patches, vision_hidden)
        return self.projector(patches)  # (B, num_patches, llm_hidden)


def build_llm(cfg: LLMConfig, tokens: TokenConfig) -> LlamaForCausalLM:
    return LlamaForCausalLM(llama_config(cfg, tokens))


def splice_image_features(
    embeds: torch.Tensor, input_ids: torch.Tensor, features: torch.Tensor, im_patch_id: int
) -> torch.Tensor:
    """Replaces the `<im_patch>` embeddings of each row by that row's image features.

    embeds (B, T, H), input_ids (B, T), features (B, P, H) -> (B, T, H)
    """
    is_patch = input_ids == im_patch_id
    counts = is_patch.sum(dim=1)
    if bool((counts != features.shape[1]).any()):
        raise ValueError(f"each prompt needs exactly {features.shape[1]} <im_patch> tokens; got {counts.tolist()}")
    embeds = embeds.clone()
    embeds[is_patch] = features.reshape(-1, features.shape[-1]).to(embeds.dtype)
    return embeds


class ExplainHead(nn.Module):
    """Plain LLaVA's own token embedding and output head (vocab = base + 3 image tokens, no [IMG]).

    The reference's summarizer pass asks the *plain* LLaVA-7B-v1 to explain the edit; MGIE retrained
    embed_tokens and lm_head, so its explanations differ. Parameter names follow LlamaForCausalLM's.
    """

    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, hidden_size)
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)
