"""MGIE against the reference demo (apple/ml-mgie demo.ipynb), written from the notebook's logic, not from mgie/.

The reference side below uses only transformers / diffusers and the model's modules (the LLaVA decoder, vision
tower, edit head, UNet, VAE): it builds the vicuna_v1_1 prompt the way LLaVA's conversation template does,
runs HF `generate` with the notebook's arguments, selects the hidden states and cleans the text as the
notebook does, then runs diffusers' InstructPix2Pix pipeline with a scheduler made from a copy of the official
InstructPix2Pix scheduler config (tests/data/ip2p_scheduler_config.json, which has no timestep_spacing key).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mgie import MGIE

SCHEDULER_JSON = Path(__file__).parent / "data" / "ip2p_scheduler_config.json"
SEED = 13331
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def remove_alter(s):  # the notebook's function, verbatim
    if "ASSISTANT:" in s:
        s = s[s.index("ASSISTANT:") + 10 :].strip()  # noqa: E701
    if "</s>" in s:
        s = s[: s.index("</s>")].strip()  # noqa: E701
    if "alternative" in s.lower():
        s = s[: s.lower().index("alternative")]  # noqa: E701
    if "[IMG0]" in s:
        s = s[: s.index("[IMG0]")]  # noqa: E701
    s = ".".join([s.strip() for s in s.split(".")[:2]])
    if s[-1] != ".":
        s += "."  # noqa: E225, E701
    return s.strip()


def vicuna_v1_1_prompt(user: str) -> str:
    # LLaVA conv_templates['vicuna_v1_1']: sep_style TWO, sep " ", sep2 "</s>", the assistant message None
    return SYSTEM + " " + "USER: " + user + " " + "ASSISTANT:"


def reference_pipeline(model: MGIE):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    scheduler = EulerAncestralDiscreteScheduler.from_config(json.loads(SCHEDULER_JSON.read_text()))
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=model.vae,
        text_encoder=None,
        tokenizer=None,
        unet=model.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def clip_processor(model: MGIE):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    size = model.config.vision.image_size
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


@torch.no_grad()
def reference_edit(model: MGIE, image: Image.Image, instruction: str, steps: int):
    """The demo's cell for one image: -> (edited image as float (H, W, 3) in [0, 1], expressive text)."""
    cfg, tokenizer = model.config, model.tokenizer
    img_tokens = (cfg.vision.image_size // cfg.vision.patch_size) ** 2
    img = clip_processor(model)(image, return_tensors="pt")["pixel_values"][0]
    txt = "what will this image be like if '%s'" % (instruction)
    txt = txt + "\n" + "<im_start>" + "<im_patch>" * img_tokens + "<im_end>"
    enc = tokenizer(vicuna_v1_1_prompt(txt))
    ids, mask = torch.as_tensor(enc["input_ids"])[None], torch.as_tensor(enc["attention_mask"])[None]

    # LlavaLlamaForCausalLM.forward: the projected patch features replace the <im_patch> embeddings
    embeds = model.llm.get_input_embeddings()(ids)  # (1, T, H)
    feats = model.vision(img[None])  # (1, P, H)
    embeds[ids == cfg.tokens.im_patch_id] = feats[0]
    out = model.llm.generate(
        input_ids=ids,
        inputs_embeds=embeds,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=cfg.generation.max_new_tokens,
        num_beams=1,
        no_repeat_ngram_size=3,
        return_dict_in_generate=True,
        output_hidden_states=True,
        eos_token_id=cfg.tokens.eos_id,
        pad_token_id=cfg.tokens.pad_id,
    )
    seq = out["sequences"][0].tolist()
    if seq[: ids.shape[1]] != ids[0].tolist():  # LLaVA's generate returns prompt + answer
        seq = ids[0].tolist() + seq
    hid = torch.cat([x[-1] for x in out["hidden_states"]], dim=1)[0]
    img0 = cfg.tokens.img_first_id  # 32003 in the notebook
    p = min(seq.index(img0) - 1 if img0 in seq else len(hid) - 9, len(hid) - 9)
    hid = hid[p : p + 8]
    text = remove_alter(tokenizer.decode(seq))
    emb = model.edit_head(hid[None])
    null = model.edit_head(torch.zeros(1, 8, cfg.llm.hidden_size))
    res = reference_pipeline(model)(
        image=image,
        prompt_embeds=emb,
        negative_prompt_embeds=null,
        num_inference_steps=steps,
        generator=torch.Generator(device=model.device).manual_seed(SEED),
        output_type="np",
    ).images[0]
    return res, text, seq[ids.shape[1] :]


@pytest.fixture(scope="module")
def model() -> MGIE:
    return MGIE.from_preset("tiny", seed=0)


def _image(seed: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def rigged(token: int) -> MGIE:
    """The tiny model with [IMG0]'s output row set to twice that of `token`, a token the plain model writes
    (at step 4 for 241, step 11 for 206 with 16 new tokens): [IMG0] then wins where that token would, so
    [IMG0] comes mid-answer (241) or too late for a whole window, which is pulled back (206)."""
    model = MGIE.from_preset("tiny", seed=0)
    head = model.llm.lm_head.weight
    with torch.no_grad():
        head[model.config.tokens.img_first_id] = 2 * head[token]
    return model


@pytest.fixture(scope="module")
def models(model) -> dict:
    return {"plain": model, "img0-early": rigged(241), "img0-late": rigged(206)}


@pytest.mark.parametrize("which", ["plain", "img0-early", "img0-late"])
@pytest.mark.parametrize("instruction, seed", [("make the frame red", 0), ("turn the day into night", 1)])
def test_edit_reproduces_the_reference_demo(models, which, instruction, seed):
    model = models[which]
    image = _image(seed, model.config.sampler.resolution)  # the working size: edit's crop/resize is a no-op
    steps = 10
    want_pixels, want_text, generated = reference_edit(model, image, instruction, steps)
    got = model.edit([image], [instruction], seeds=[SEED], num_inference_steps=steps, rng="reference", output_type="np")
    assert got.expressive_instructions == [want_text]
    assert got.images.shape == (1, *want_pixels.shape)
    assert np.abs(got.images[0] - want_pixels).max() <= 1e-5
    img0 = model.config.tokens.img_first_id
    assert (img0 in generated) == (which != "plain"), generated
    # the comparison has teeth: another seed or the old "leading" spacing move the pixels
    other = model.edit([image], [instruction], seeds=[SEED + 1], num_inference_steps=steps, output_type="np")
    assert np.abs(other.images[0] - want_pixels).max() > 1e-3


def test_leading_spacing_would_not_reproduce_the_demo(model):
    image = _image(3, model.config.sampler.resolution)
    want, _, _ = reference_edit(model, image, "add snow", 6)
    leading = dataclasses.replace(model.config.scheduler, timestep_spacing="leading")
    old = MGIE(model.config.replace(scheduler=leading), model._components(), model.tokenizer, "old")
    got = old.edit([image], ["add snow"], seeds=[SEED], num_inference_steps=6, output_type="np")
    assert np.abs(got.images[0] - want).max() > 1e-3


def test_explain_prompt_and_decoding_follow_the_summarizer_pass():
    """process_data.ipynb: the two-space prompt, plain greedy up to 1024 tokens with no n-gram limit, on plain
    LLaVA (its own embed_tokens / lm_head), then remove_alter."""
    from mgie.mllm import ExplainHead

    base = MGIE.from_preset("tiny", seed=0, parts={"express"})
    cfg = base.config
    llava_vocab = cfg.tokens.img_first_id  # LLaVA-v1: base vocab + the 3 image tokens, no [IMG]
    config = cfg.replace(llm=dataclasses.replace(cfg.llm, explain_vocab_size=llava_vocab))
    torch.manual_seed(5)
    plain = ExplainHead(llava_vocab, cfg.llm.hidden_size).eval()
    model = MGIE(config, {**base._components(), "explain": plain}, base.tokenizer, "x", parts={"express"})
    assert cfg.prompt.explain_template == "what will this image be like if '{instruction}'  (in a short paragraph)"
    assert cfg.generation.explain_no_repeat_ngram_size == 0

    image, instruction = _image(4), "make it more healthy"
    with torch.no_grad():
        llava = type(base.llm)(base.llm.config)  # plain LLaVA: MGIE's decoder blocks, LLaVA's own embedding/head
        llava.load_state_dict(base.llm.state_dict())
        llava.resize_token_embeddings(llava_vocab)
        llava.get_input_embeddings().weight.copy_(plain.embed_tokens.weight)
        llava.lm_head.weight.copy_(plain.lm_head.weight)
        llava.eval()
        img_tokens = cfg.vision.num_patches
        txt = "what will this image be like if '%s'  (in a short paragraph)" % (instruction)
        txt = txt + "\n" + "<im_start>" + "<im_patch>" * img_tokens + "<im_end>"
        ids = torch.as_tensor(base.tokenizer(vicuna_v1_1_prompt(txt))["input_ids"])[None]
        embeds = llava.get_input_embeddings()(ids)
        embeds[ids == cfg.tokens.im_patch_id] = base.vision(
            clip_processor(base)(image, return_tensors="pt")["pixel_values"]
        )[0]
        out = llava.generate(
            input_ids=ids,
            inputs_embeds=embeds,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=cfg.generation.explain_max_new_tokens,
            eos_token_id=cfg.tokens.eos_id,
            pad_token_id=cfg.tokens.pad_id,
        )[0].tolist()
    if out[: ids.shape[1]] != ids[0].tolist():
        out = ids[0].tolist() + out
    want = remove_alter(base.tokenizer.decode(out))
    assert model.explain([image], [instruction]) == [want]
    # MGIE's own head explains differently: the plain head is what the reference used
    assert base.explain([image], [instruction]) != [want]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the demo's generator lives there")
def test_reference_rng_on_cuda_matches_the_pipeline_with_a_cuda_generator():
    """The demo: fp16 on the GPU, `generator=T.Generator(device='cuda').manual_seed(SEED)`. rng="reference"
    gives its pixels; the portable default (CPU generators) does not."""
    model = MGIE.from_preset("tiny", seed=0, parts={"edit"}, device="cuda", dtype=torch.float16)
    image = _image(6, model.config.sampler.resolution)
    cond = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(2)).to("cuda", torch.float16)
    want = reference_pipeline(model)(
        image=image,
        prompt_embeds=cond,
        negative_prompt_embeds=model.null_conditioning(),
        num_inference_steps=10,
        generator=torch.Generator(device="cuda").manual_seed(SEED),
        output_type="np",
    ).images[0]
    got = model.sample([image], cond, seeds=[SEED], num_inference_steps=10, rng="reference", output_type="np")[0]
    portable = model.sample([image], cond, seeds=[SEED], num_inference_steps=10, output_type="np")[0]
    assert np.abs(got - want).max() <= 1e-3, np.abs(got - want).max()
    assert np.abs(portable - want).max() > 1e-2
