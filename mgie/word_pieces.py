"""A tiny model's LLM on word pieces: its tokenizer refitted to the training texts and the LLM resized to it.

    core, size = fit_tiny_tokenizer(texts, pieces=1024)      # mgie.tokenizer
    model = with_tokenizer(model, core.to_str(), seed=0)   # a new LLM of that vocabulary; the rest kept

For a model that learns its LLM from scratch (mgie-tiny): the autoencoder stage never trains the LLM, so
the LLM can be replaced after it (bench.train_tiny --tokenizer words).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from .config import in_process_tokens
from .model import MGIE, seeded_component, share_img_rows
from .tokenizer import tiny_tokenizer_from


def with_tokenizer(model: MGIE, tokenizer_json: str, seed: int = 0) -> MGIE:
    """`model` with an in-process tokenizer of other pieces (`fit_tiny_tokenizer(...)[0].to_str()`) and a new
    LLM sized to it, randomly initialised from `seed`; every other part is kept as it is."""
    base = json.loads(tokenizer_json)["model"]["vocab"]
    tokens = dataclasses.replace(in_process_tokens(len(base)), num_img_tokens=model.config.tokens.num_img_tokens)
    config = model.config.replace(
        llm=dataclasses.replace(model.config.llm, vocab_size=len(base) + 3 + tokens.num_img_tokens), tokens=tokens
    )
    llm = seeded_component(config, "llm", seed).to(model.device, model.dtype)  # as from_preset draws it
    share_img_rows(llm, model.edit_head, tokens)
    parts = {"vision": model.vision, "edit_head": model.edit_head, "unet": model.unet, "vae": model.vae}
    components = {k: v for k, v in {**parts, "llm": llm, "explain": model.explain_head}.items() if v is not None}
    identity = json.dumps({"from": model.fingerprint(), "tokenizer": tokenizer_json, "seed": seed}, sort_keys=True)
    fingerprint = hashlib.sha256(identity.encode()).hexdigest()
    return MGIE(config, components, tiny_tokenizer_from(tokenizer_json, tokens), fingerprint, model.parts)
