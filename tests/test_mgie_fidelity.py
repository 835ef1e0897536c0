"""Each reference-fidelity point on its own: scheduler spacing, rng modes, tokenizer ids, text clean-up, CLIP
resize, work size, guidance branches. Expected values come from formulas or the reference's own code, not mgie/."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from mgie import MGIE, preset
from mgie.config import GenerationConfig, MGIEConfig
from mgie.convert import _scheduler_config
from mgie.images import clip_resize_size, reference_work_size, to_clip_pixels
from mgie.prompt import clean_expressive
from mgie.sampler import build_scheduler, guidance_branches, seeded_generators
from tests.test_mgie_reference import SCHEDULER_JSON, remove_alter

# ---------------------------------------------------------------------------------------------- 1. timesteps


def _reference_sigmas(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Timesteps and sigmas from the formulas, float64: scaled_linear betas 0.00085..0.012 over 1000 steps,
    linspace over [0, 999] descending, sigma(t) = sqrt((1 - abar) / abar) interpolated at t."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    abar = np.cumprod(1.0 - betas)
    train_sigmas = np.sqrt((1 - abar) / abar)
    timesteps = np.linspace(0, 999, steps)[::-1]
    return timesteps, np.interp(timesteps, np.arange(1000), train_sigmas)


@pytest.mark.parametrize("name", ["tiny", "mgie-7b"])
def test_presets_use_linspace_timesteps_and_the_reference_initial_sigma(name):
    scheduler = build_scheduler(preset(name).scheduler)
    scheduler.set_timesteps(100)
    timesteps, sigmas = _reference_sigmas(100)
    np.testing.assert_allclose(scheduler.timesteps.numpy(), timesteps, rtol=0, atol=1e-3)
    assert float(scheduler.timesteps[0]) == pytest.approx(999.0) and float(scheduler.timesteps[1]) == pytest.approx(
        988.909, abs=1e-3
    )
    np.testing.assert_allclose(scheduler.sigmas[:-1].numpy(), sigmas, rtol=1e-4)
    # linspace spacing starts from pure noise at sigma_max = 14.6146 (diffusers' init_noise_sigma for
    # linspace/trailing; sqrt(sigma_max^2 + 1) = 14.649 is what it uses for "leading")
    assert float(scheduler.init_noise_sigma) == pytest.approx(sigmas[0], rel=1e-5)
    assert sigmas[0] == pytest.approx(14.6146, abs=1e-3)
    leading = build_scheduler(dataclasses.replace(preset(name).scheduler, timestep_spacing="leading"))
    leading.set_timesteps(100)
    assert float(leading.timesteps[0]) == 991.0  # what the old default gave: not the demo's schedule


def test_convert_builds_the_scheduler_as_from_config_does(tmp_path):
    from diffusers import EulerAncestralDiscreteScheduler

    (tmp_path / "scheduler").mkdir()
    shutil.copy(SCHEDULER_JSON, tmp_path / "scheduler" / "scheduler_config.json")
    file = json.loads(SCHEDULER_JSON.read_text())
    assert "timestep_spacing" not in file and file["_class_name"] == "EulerAncestralDiscreteScheduler"
    # a preset that said "leading" and another offset: keys missing from the file take diffusers' defaults
    base = dataclasses.replace(preset("mgie-7b").scheduler, timestep_spacing="leading", steps_offset=7)
    cfg = _scheduler_config(tmp_path, base)
    assert (cfg.name, cfg.timestep_spacing, cfg.steps_offset) == ("euler_ancestral", "linspace", 1)
    ours, theirs = build_scheduler(cfg), EulerAncestralDiscreteScheduler.from_config(file)
    for s in (ours, theirs):
        s.set_timesteps(100)
    assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.sigmas, theirs.sigmas)
    assert float(ours.init_noise_sigma) == float(theirs.init_noise_sigma)
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({**file, "_class_name": "PNDMScheduler"}))
    with pytest.raises(ValueError, match="PNDMScheduler"):
        _scheduler_config(tmp_path, base)


# ---------------------------------------------------------------------------------------------- 2. rng


def test_rng_is_a_validated_recorded_setting():
    cfg = preset("tiny")
    assert cfg.sampler.rng == "cpu" and cfg.to_dict()["sampler"]["rng"] == "cpu"  # in the config: the fingerprint
    ref = MGIEConfig.from_dict({**cfg.to_dict(), "sampler": {**cfg.to_dict()["sampler"], "rng": "reference"}})
    assert ref.sampler.rng == "reference"
    with pytest.raises(ValueError, match="sampler.rng"):
        cfg.replace(sampler=dataclasses.replace(cfg.sampler, rng="gpu"))
    with pytest.raises(ValueError, match="rng must be one of"):
        seeded_generators([1], "cuda")
    assert [g.device.type for g in seeded_generators([1, 2], "cpu", "meta")] == ["cpu", "cpu"]


def test_reference_rng_draws_like_diffusers_randn_tensor_with_a_list_of_generators():
    from diffusers.utils.torch_utils import randn_tensor

    from mgie.sampler import initial_noise

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for rng, dtype in (("reference", torch.float16), ("cpu", torch.float32)):
        gens = seeded_generators([3, 4], rng, device)
        assert gens[0].device.type == ("cpu" if rng == "cpu" else torch.device(device).type)
        ours = initial_noise(gens, (4, 8, 8), device, dtype)  # (2, 4, 8, 8)
        theirs = randn_tensor(
            (2, 4, 8, 8), generator=seeded_generators([3, 4], rng, device), device=torch.device(device), dtype=dtype
        )
        assert ours.dtype == dtype and torch.equal(ours, theirs)


def test_sample_passes_rng_through(monkeypatch):
    import mgie.sampler as sampler

    model = MGIE.from_preset("tiny", seed=0, parts={"edit"})
    seen = []
    real = sampler.seeded_generators
    monkeypatch.setattr(
        sampler,
        "seeded_generators",
        lambda seeds, rng="cpu", device="cpu": seen.append(rng) or real(seeds, rng, device),
    )
    image = [Image.new("RGB", (32, 32), (120, 30, 200))]
    cond = torch.zeros(1, 77, 32)
    model.sample(image, cond, seeds=[1], num_inference_steps=1)
    model.sample(image, cond, seeds=[1], num_inference_steps=1, rng="reference")
    assert seen == ["cpu", "reference"]
    from mgie.engine import OverlappedEditor

    seen.clear()
    full = MGIE.from_preset("tiny", seed=0)
    monkeypatch.setattr(full, "sample", lambda *a, rng=None, **k: seen.append(rng) or [image[0]])
    OverlappedEditor(full).edit(image, ["x"], [1], 1, rng="reference")
    assert seen == ["reference"]
    with pytest.raises(ValueError, match="rng must be one of"):
        model.sample(image, cond, seeds=[1], num_inference_steps=1, rng="gpu")


# ---------------------------------------------------------------------------------------------- 3. tokenizer


def test_demo_prompt_ids_around_every_special_token():
    """Ids of the in-process tokenizer (LLaMA layout) pinned around <s>, <im_start>, the patches and <im_end>.

    Legacy (reference) handling: the chunk after <im_end> gets its own "▁" prefix, so " ASSISTANT:" starts
    with two "▁" (259); non-legacy would give one. Uppercase letters are byte pieces (<0x41> = 3 + 0x41).
    """
    model = MGIE.from_preset("tiny", seed=0, parts={"express"})
    t = model.config.tokens
    ids = model.prompt_rows(["make the frame red"], model.config.prompt.edit_template)[0]
    space, quote, newline, colon = 259, 288, 3 + 0x0A, 291
    assert ids[0] == 1 and ids.count(1) == 1  # <s>
    start, end = ids.index(t.im_start_id), ids.index(t.im_end_id)
    re_, d = 297, 263  # the "re" merge, the letter "d"
    assert ids[start - 4 : start] == [re_, d, quote, newline]  # "...re" "d" "'" "\n" <im_start>
    assert ids[start + 1 : end] == [t.im_patch_id] * model.config.vision.num_patches
    A, S, I, T, N = (3 + ord(c) for c in "ASITN")  # noqa: E741 (the letters they stand for)
    assert ids[end:] == [t.im_end_id, space, space, A, S, S, I, S, T, A, N, T, colon]
    assert model.tokenizer.decode(ids[end + 1 :]) == " ASSISTANT:"  # the decoder drops one leading space


def test_load_tokenizer_uses_legacy_llama_handling(tmp_path):
    """A LLaMA tokenizer saved by current transformers (legacy=False) loads with the legacy dummy prefix."""
    from transformers import LlamaTokenizer

    from mgie.config import TokenConfig
    from mgie.tokenizer import load_tokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, **{c: 4 + i for i, c in enumerate("ASINT:")}}
    merges = [("A", "S")]
    vocab["AS"] = len(vocab)
    LlamaTokenizer(vocab=vocab, merges=merges, legacy=False).save_pretrained(str(tmp_path))
    n = len(vocab)
    tokens = TokenConfig(im_patch_id=n, im_start_id=n + 1, im_end_id=n + 2, img_first_id=n + 3)
    tok = load_tokenizer(str(tmp_path), tokens)
    ids = tok("<im_end>ASSISTANT:", add_special_tokens=False)["input_ids"]
    assert ids[:3] == [tokens.im_end_id, vocab["▁"], vocab["AS"]]  # the chunk after <im_end> gets "▁"
    ids = tok("<im_end> ASSISTANT:")["input_ids"]  # SentencePiece's dummy prefix even before a space; <s> first
    assert ids[:5] == [1, tokens.im_end_id, vocab["▁"], vocab["▁"], vocab["AS"]]
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(str(tmp_path))  # current default: no prefix after an added token
    plain.add_tokens(["<im_patch>", "<im_start>", "<im_end>"], special_tokens=True)
    assert plain("<im_end>ASSISTANT:", add_special_tokens=False)["input_ids"][:2] == [tokens.im_end_id, vocab["AS"]]


def test_sentencepiece_model_loads_with_sentencepiece_ids(tmp_path):
    """With the sentencepiece trainer installed: a small trained SentencePiece model saved as a LLaMA tokenizer
    directory gives, through load_tokenizer, SentencePiece's own ids for every chunk between special tokens."""
    spm = pytest.importorskip("sentencepiece")
    from mgie.config import TokenConfig
    from mgie.tokenizer import load_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n".join(
            [
                "A chat between a curious user and an artificial intelligence assistant.",
                "USER: what will this image be like if 'make the frame red'",
                "ASSISTANT: the frame is red and the picture looks warmer.",
            ]
            * 20
        )
    )
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(tmp_path / "tokenizer"),
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
    )  # as LLaMA's tokenizer.model
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    llava = tmp_path / "llava"
    llava.mkdir()
    shutil.copy(tmp_path / "tokenizer.model", llava / "tokenizer.model")
    (llava / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    )
    n = sp.get_piece_size()
    tokens = TokenConfig(im_patch_id=n, im_start_id=n + 1, im_end_id=n + 2, img_first_id=n + 3, num_img_tokens=2)
    tok = load_tokenizer(str(llava), tokens)
    text = (
        "USER: what will this image be like if 'make the frame red'\n<im_start><im_patch><im_patch><im_end> ASSISTANT:"
    )
    head, rest = text.split("<im_start>")
    want = [1] + sp.encode(head) + [n + 1, n, n, n + 2] + sp.encode(" ASSISTANT:")  # each chunk: its dummy prefix
    assert sp.id_to_piece(want[-3:]) == ["▁", "▁ASSISTANT", ":"]  # SentencePiece prefixes even a leading space
    assert tok(text)["input_ids"] == want
    # the same after a save and reload (our checkpoints keep the tokenizer)
    tok.save_pretrained(str(tmp_path / "saved"))
    assert load_tokenizer(str(tmp_path / "saved"), tokens)(text)["input_ids"] == want


# ---------------------------------------------------------------------------------------------- 4. clean-up


CASES = [
    "The frame will be red. It glows warmly. A third sentence.",
    "A bright red frame",
    "The sky is darker.  Stars appear in it  . More",
    "Make it red. An alternative would be blue. Or green.",
    "Red, as an alternative to blue. Or green.",
    "A.B.C",
    "  leading and trailing spaces .  ",
    "Wait... what?",
]


@pytest.mark.parametrize("text", CASES)
def test_clean_up_is_remove_alter_exactly(text):
    decoded = f"<s> A chat ... USER: what will this image be like if 'x'\n<im_start> ASSISTANT: {text}[IMG0][IMG1]</s>"
    assert clean_expressive(text, GenerationConfig()) == remove_alter(decoded)
    tidy = clean_expressive(text, GenerationConfig(clean_style="tidy"))
    assert ".." not in tidy and "  " not in tidy


def test_clean_up_styles_differ_where_the_reference_drops_the_space():
    text = "The frame will be red. It glows warmly. A third."
    assert clean_expressive(text, GenerationConfig()) == "The frame will be red.It glows warmly."
    assert clean_expressive(text, GenerationConfig(clean_style="tidy")) == "The frame will be red. It glows warmly."
    assert clean_expressive("   ", GenerationConfig()) == ""  # the reference raises IndexError here
    assert clean_expressive("Alternative colours: red.", GenerationConfig()) == ""
    with pytest.raises(IndexError):
        remove_alter("ASSISTANT: Alternative colours: red.")
    with pytest.raises(ValueError, match="clean_style"):
        preset("tiny").replace(generation=GenerationConfig(clean_style="pretty"))


# ---------------------------------------------------------------------------------------------- 7. images


@pytest.mark.parametrize("size", [(305, 200), (200, 305), (224, 224), (641, 427), (333, 500)])
def test_clip_resize_truncates_like_clip_image_processor(size):
    from transformers.image_transforms import get_resize_output_image_size
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    w, h = size
    want_h, want_w = get_resize_output_image_size(
        np.zeros((h, w, 3)), 224, default_to_square=False, input_data_format="channels_last"
    )
    assert clip_resize_size(w, h, 224) == (want_w, want_h)
    if size == (305, 200):
        assert (want_w, round(224 * 305 / 200)) == (341, 342)  # int() where round() would give 342
    rng = np.random.default_rng(w)
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    vision = preset("mgie-7b").vision
    theirs = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})(
        image, return_tensors="pt"
    )["pixel_values"]
    np.testing.assert_allclose(to_clip_pixels([image], vision).numpy(), theirs.numpy(), atol=1e-5)


def test_reference_work_size_floors_to_multiples_of_8():
    assert reference_work_size(512, 512) == (512, 512)
    assert reference_work_size(517, 390) == (512, 384)
    assert reference_work_size(8, 15) == (8, 8)
    with pytest.raises(ValueError, match="smaller than 8"):
        reference_work_size(7, 100)


def test_reference_work_size_is_what_diffusers_edits_at():
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(vae_scale_factor=8)
    for w, h in [(517, 390), (640, 427), (64, 64)]:
        out = processor.preprocess(Image.new("RGB", (w, h)))  # (1, 3, H, W)
        assert (out.shape[-1], out.shape[-2]) == reference_work_size(w, h)


# ---------------------------------------------------------------------------------------------- 8. guidance


@pytest.fixture(scope="module")
def edit_model() -> MGIE:
    return MGIE.from_preset("tiny", seed=0, parts={"edit"})


@pytest.mark.parametrize(
    "scales, branches", [((7.5, 1.5), 3), ((1.0, 1.5), 1), ((7.5, 0.9), 1), ((0.5, 0.5), 1), ((1.01, 1.0), 3)]
)
def test_guidance_branches_match_diffusers(edit_model, scales, branches):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    guidance, image_guidance = scales
    assert guidance_branches(guidance, image_guidance) == branches
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=edit_model.vae,
        text_encoder=None,
        tokenizer=None,
        unet=edit_model.unet,
        safety_checker=None,
        scheduler=EulerAncestralDiscreteScheduler.from_config(json.loads(SCHEDULER_JSON.read_text())),
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    cond = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(0))
    batches = []
    hook = edit_model.unet.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    try:
        ours = edit_model.sample(
            [image],
            cond,
            seeds=[9],
            num_inference_steps=3,
            guidance_scale=guidance,
            image_guidance_scale=image_guidance,
            output_type="np",
        )
        ours_batches, batches[:] = list(batches), []
        ref = pipe(
            image=image,
            prompt_embeds=cond,
            negative_prompt_embeds=edit_model.null_conditioning(),
            num_inference_steps=3,
            guidance_scale=guidance,
            image_guidance_scale=image_guidance,
            generator=torch.Generator().manual_seed(9),
            output_type="np",
        ).images
    finally:
        hook.remove()
    assert ours_batches == batches == [branches] * 3  # only the branches diffusers runs
    assert np.abs(ours - ref).max() <= 1e-5
