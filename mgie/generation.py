"""Batched greedy decoding that returns the expressive text and the [IMG] hidden states.

Prompts are left-padded so that every row's last prompt token sits in the last column; one KV cache
serves the batch. Only the last layer's state of the newest position is kept per step (not every
layer's states, as `generate(output_hidden_states=True)` would), and decoding stops as soon as every
row has produced EOS, or [IMG0] and the num_img - 1 tokens after it (whatever they are: the reference
decodes on, so a stray [IMG7] before [IMG0] does not stop it either).

Which states condition the edit (reference semantics): the state at position i predicts token i+1; the
edit head takes the 8 states that predict [IMG0..7]. If no [IMG0] was generated, the reference takes
the 8 states before the last one; a window that would run past the end is pulled back the same way.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import DynamicCache, LlamaForCausalLM


@dataclass
class GenerationOutput:
    token_ids: list[list[int]]  # generated ids per row, prompt excluded, stop token included
    img_states: torch.Tensor | None  # (B, num_img, H) last-layer states predicting [IMG0..n-1]
    found_img: list[bool]  # whether the row generated [IMG0]


def img_window_start(generated: list[int], img_first_id: int, num_img: int, continued: bool) -> int:
    """Index k (k-th generated token) of the first state of the [IMG] window.

    State k is the one that predicts generated token k; negative k reach back into the prompt. The
    reference computes over the whole decoded sequence and clamps the window to end one state before
    the last; `continued` says decoding stopped early, right after the last [IMG], where the reference
    would have decoded (at least) one more token, so the clamp sees one more.
    """
    n = len(generated) + (1 if continued else 0)
    last_allowed = n - num_img - 1
    start = generated.index(img_first_id) if img_first_id in generated else last_allowed
    return min(start, last_allowed)


class _NgramBan:
    """no_repeat_ngram_size: bans a token that would repeat an n-gram already in the row (prompt included)."""

    def __init__(self, size: int, prompts: list[list[int]]):
        self.size = size
        self.seen: list[dict[tuple[int, ...], set[int]]] = []
        self.history = [list(p) for p in prompts]
        for row in self.history:
            table: dict[tuple[int, ...], set[int]] = {}
            for i in range(len(row) - size + 1) if size > 0 else []:
                table.setdefault(tuple(row[i : i + size - 1]), set()).add(row[i + size - 1])
            self.seen.append(table)

    def banned(self, row: int) -> set[int]:
        if self.size <= 0 or len(self.history[row]) < self.size - 1:
            return set()
        return self.seen[row].get(tuple(self.history[row][len(self.history[row]) - self.size + 1 :]), set())

    def all_banned(self, done: list[bool]) -> tuple[list[int], list[int]]:
        rows: list[int] = []
        tokens: list[int] = []
        for row in range(len(self.history)):
            if not done[row]:
                found = self.banned(row)
                rows += [row] * len(found)
                tokens += sorted(found)
        return rows, tokens

    def push(self, row: int, token: int) -> None:
        hist = self.history[row]
        hist.append(token)
        if self.size > 0 and len(hist) >= self.size:
            self.seen[row].setdefault(tuple(hist[-self.size : -1]), set()).add(token)


def _cache_kwarg(model) -> str:
    # transformers renamed `past_key_values` to `cache`; support both releases
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def greedy_generate(
    llm: LlamaForCausalLM,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_ids: list[list[int]],
    *,
    max_new_tokens: int,
    no_repeat_ngram_size: int,
    eos_id: int,
    img_first_id: int | None = None,
    num_img: int = 0,
    min_new_tokens: int = 0,
    embedding: torch.nn.Module | None = None,
    head: torch.nn.Module | None = None,
) -> GenerationOutput:
    """inputs_embeds (B, T, H) left-padded, attention_mask (B, T); prompt_ids: unpadded ids per row.

    `embedding` / `head` replace the LLM's own token embedding and output head (the explain pass decodes
    with plain LLaVA's, which have no [IMG] rows); the decoder blocks are shared.
    """
    batch, _, _ = inputs_embeds.shape
    device = inputs_embeds.device
    collect = img_first_id is not None and num_img > 0
    img_at = [-1] * batch  # index of the row's first generated [IMG0]
    cache_key = _cache_kwarg(llm.model)
    cache = DynamicCache(config=llm.config)
    mask = attention_mask.to(device)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    ban = _NgramBan(no_repeat_ngram_size, prompt_ids)

    out = llm.model(
        inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_key: cache}
    )
    hidden = out.last_hidden_state  # (B, T, H)
    # states that predict the last prompt tokens: the [IMG] fallback window may reach back into the prompt
    states = [hidden[:, -(num_img + 1) :]] if collect else []  # [(B, num_img + 1, H)]
    last = hidden[:, -1]  # (B, H)

    generated: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    stopped_on_img = [False] * batch
    embed = embedding if embedding is not None else llm.get_input_embeddings()
    head = head if head is not None else llm.lm_head
    banned = ban.all_banned(done)  # (rows, tokens) index lists, known before the step's logits
    for step in range(max_new_tokens):
        logits = head(last).float()  # (B, V)
        if step < min_new_tokens:
            logits[:, eos_id] = float("-inf")
        if banned[0]:
            # one host-to-device copy per step: indexing row by row waited on the GPU once per row
            index = torch.tensor(banned, dtype=torch.long).to(device)
            logits[index[0], index[1]] = float("-inf")
        next_ids = logits.argmax(dim=-1)  # (B,)
        next_list = next_ids.tolist()
        for row, tok in enumerate(next_list):
            if done[row]:
                continue
            generated[row].append(tok)
            ban.push(row, tok)
            if tok == eos_id:
                done[row] = True
            else:
                if collect and tok == img_first_id and img_at[row] < 0:
                    img_at[row] = len(generated[row]) - 1
                # the window's states all exist once num_img tokens follow from [IMG0] on: nothing later
                # changes the text (cut at [IMG0]) or the states (the reference decodes on to EOS)
                if img_at[row] >= 0 and len(generated[row]) == img_at[row] + num_img:
                    done[row] = stopped_on_img[row] = True
        if all(done) or step == max_new_tokens - 1:
            break
        # finished rows go on feeding whatever they predict: their outputs are never read again
        feed = next_ids
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        positions = positions[:, -1:] + 1
        out = llm.model(
            inputs_embeds=embed(feed)[:, None],
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{cache_key: cache},
        )
        last = out.last_hidden_state[:, -1]  # (B, H)
        if collect:
            states.append(last[:, None])
        banned = ban.all_banned(done)  # host work while the GPU runs the step just queued

    img_states = None
    if collect:
        all_states = torch.cat(states, dim=1)  # (B, num_img + 1 + steps, H); index k + num_img predicts token k
        rows = []
        for row in range(batch):
            start = img_window_start(
                generated[row],
                img_first_id,
                num_img,
                continued=stopped_on_img[row] and len(generated[row]) < max_new_tokens,
            )
            rows.append(all_states[row, start + num_img : start + 2 * num_img])
        img_states = torch.stack(rows)  # (B, num_img, H)
    found = [collect and img_first_id in g for g in generated]
    return GenerationOutput(token_ids=generated, img_states=img_states, found_img=found)
