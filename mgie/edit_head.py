"""EditMapper: maps the MLLM's [IMG] states to a sequence of diffusion conditioning vectors."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .config import EditHeadConfig


class EditHead(nn.Module):
    """(B, n_img, llm_hidden) states + [IMG] embeddings -> (B, num_queries, out_dim) conditioning.

    An encoder runs over the [IMG] tokens; a decoder over learned queries attends to it. Parameter
    names follow the reference checkpoint (llm2hid, query, mapper, hid2feat). `img_embeds` holds the
    [IMG] token embeddings the head adds to the states (the reference checkpoint's `emb`), so the
    diffusion side can build the guidance null without loading the LLM.
    """

    def __init__(self, cfg: EditHeadConfig, num_img_tokens: int = 8):
        super().__init__()
        self.cfg = cfg
        self.llm2hid = nn.Linear(cfg.llm_hidden_size, cfg.d_model)
        self.query = nn.Parameter(torch.randn(1, cfg.num_queries, cfg.d_model))
        with warnings.catch_warnings():  # norm_first disables the nested-tensor fast path; that is expected
            warnings.simplefilter("ignore", UserWarning)
            self.mapper = nn.Transformer(
                d_model=cfg.d_model,
                nhead=cfg.num_heads,
                num_encoder_layers=cfg.num_encoder_layers,
                num_decoder_layers=cfg.num_decoder_layers,
                dim_feedforward=cfg.dim_feedforward,
                dropout=0.0,
                batch_first=True,
                norm_first=True,
            )
        self.hid2feat = nn.Linear(cfg.d_model, cfg.out_dim)
        self.img_embeds = nn.Parameter(torch.randn(num_img_tokens, cfg.llm_hidden_size) * 0.02)

    def forward(self, img_states: torch.Tensor) -> torch.Tensor:
        """img_states (B, n_img, llm_hidden) -> (B, num_queries, out_dim)"""
        hid = self.llm2hid(img_states + self.img_embeds.unsqueeze(0))  # (B, n_img, d_model)
        queries = self.query.expand(img_states.shape[0], -1, -1)  # (B, num_queries, d_model)
        hid = self.mapper(hid, queries)  # (B, num_queries, d_model)
        return self.hid2feat(hid)  # (B, num_queries, out_dim)

    def null(self) -> torch.Tensor:
        """Classifier-free-guidance null: the head applied to all-zero states. -> (1, num_queries, out_dim)"""
        zeros = self.img_embeds.new_zeros(1, *self.img_embeds.shape)  # (1, n_img, llm_hidden)
        return self.forward(zeros)
