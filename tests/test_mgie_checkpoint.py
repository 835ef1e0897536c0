"""Checkpoint round trips (local, s3) and conversion from the official release layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from mgie import MGIE
from mgie.convert import OfficialLayout, convert_official

STEPS = 2


def _images(n=2, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)) for _ in range(n)]


def _pixels(model: MGIE) -> np.ndarray:
    out = model.edit(_images(), ["make it snowy", "add a boat"], seeds=[3, 4], num_inference_steps=STEPS)
    return np.stack([np.asarray(i) for i in out.images])


@pytest.fixture(scope="module")
def tiny() -> MGIE:
    return MGIE.from_preset("tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_pixels(tiny) -> np.ndarray:
    return _pixels(tiny)


def test_save_load_gives_identical_output(tiny, tiny_pixels, tmp_path):
    fingerprint = tiny.save_pretrained(str(tmp_path / "ckpt"))
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == [
        "config.json",
        "edit_head.safetensors",
        "llm.safetensors",
        "tokenizer",
        "unet.safetensors",
        "vae.safetensors",
        "vision.safetensors",
        "weights.json",
    ]
    loaded = MGIE.from_pretrained(str(tmp_path / "ckpt"))
    assert loaded.fingerprint() == fingerprint
    assert np.array_equal(_pixels(loaded), tiny_pixels)
    # parts load only their components and agree on identity
    edit_only = MGIE.from_pretrained(f"file://{tmp_path / 'ckpt'}", parts={"edit"})
    assert edit_only.llm is None and edit_only.vision is None and edit_only.fingerprint() == fingerprint


def test_missing_key_is_named(tiny, tmp_path):
    tiny.save_pretrained(str(tmp_path / "ckpt"))
    path = tmp_path / "ckpt" / "unet.safetensors"
    state = load_file(str(path))
    state.pop("conv_in.weight")
    state["surprise.weight"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(
        KeyError, match=r"unet.*missing keys \['conv_in.weight'\].*unexpected keys \['surprise.weight'\]"
    ):
        MGIE.from_pretrained(str(tmp_path / "ckpt"))


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights.json missing"):
        MGIE.from_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not found"):
        MGIE.from_pretrained(str(tmp_path / "nowhere"))


def test_s3_round_trip(tiny, tiny_pixels, s3, tmp_path, monkeypatch):
    monkeypatch.setenv("MGIE_CACHE", str(tmp_path / "cache"))
    url = f"s3://{s3.new_bucket()}/models/tiny-ckpt"
    fingerprint = tiny.save_pretrained(url, storage_options=s3.storage_options())
    assert "models/tiny-ckpt/weights.json" in s3.list_keys(url.split("/")[2])
    # the endpoint from the standard AWS_ENDPOINT_URL environment (set by the fixture), no options given
    loaded = MGIE.from_pretrained(url)
    assert loaded.fingerprint() == fingerprint
    assert np.array_equal(_pixels(loaded), tiny_pixels)
    cached = lambda: [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]  # noqa: E731
    assert len(cached()) == 1  # one copied directory per checkpoint
    # a second load is served from the local cache: the store keeps only weights.json (which names the cache
    # entry), so a second download could not find the weights
    bucket = url.split("/")[2]
    gone = [k for k in s3.list_keys(bucket, "models/tiny-ckpt/") if k != "models/tiny-ckpt/weights.json"]
    assert len(gone) >= 7
    s3.client().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in gone]})
    assert s3.list_keys(bucket, "models/tiny-ckpt/") == ["models/tiny-ckpt/weights.json"]
    assert MGIE.from_pretrained(url, parts={"edit"}).fingerprint() == fingerprint
    assert len(cached()) == 1


# ---------------------------------------------------------------- the official layout, fabricated tiny


def _write_official(model: MGIE, root: Path, drop: str | None = None) -> OfficialLayout:
    cfg = model.config
    llava, mgie, clip, ip2p = root / "llava-7b-v1", root / "mgie_7b", root / "clip-vit-large-patch14", root / "ip2p"
    for d in (llava, mgie, clip, ip2p / "vae", ip2p / "scheduler"):
        d.mkdir(parents=True)
    llm = {k: v.clone() for k, v in model.llm.state_dict().items()}
    llava_vocab = cfg.tokens.img_first_id  # LLaVA-v1 ends before the [IMG] tokens
    llava_state = {k: v for k, v in llm.items()}
    # plain LLaVA's embedding and head differ from MGIE's retrained ones (mllm.pt): offset them
    llava_state["model.embed_tokens.weight"] = llm["model.embed_tokens.weight"][:llava_vocab].clone() + 0.5
    llava_state["lm_head.weight"] = llm["lm_head.weight"][:llava_vocab].clone() + 0.5
    llava_state.update({f"model.mm_projector.{k}": v for k, v in model.vision.projector.state_dict().items()})
    llava_state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # old transformers buffer
    keys = sorted(llava_state)
    half = len(keys) // 2
    for i, part in enumerate((keys[:half], keys[half:])):
        torch.save({k: llava_state[k] for k in part}, llava / f"pytorch_model-0000{i + 1}-of-00002.bin")
    (llava / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {k: "x" for k in keys}}))
    model.tokenizer.save_pretrained(str(llava))

    head = {f"edit_head.{k}": v for k, v in model.edit_head.state_dict().items() if k != "img_embeds"}
    mllm = {
        "model.embed_tokens.weight": llm["model.embed_tokens.weight"],
        "lm_head.weight": llm["lm_head.weight"],
        **head,
        "emb": model.edit_head.img_embeds.detach().clone().unsqueeze(0),
    }
    unet = dict(model.unet.state_dict())
    if drop:
        mllm.pop(drop, None)
        unet.pop(drop, None)
    torch.save(mllm, mgie / "mllm.pt")
    torch.save(unet, mgie / "unet.pt")

    # CLIP's own checkpoints nest the vision weights under vision_model.
    tower = {
        "vision_model." + k.removeprefix("tower.").removeprefix("vision_model."): v
        for k, v in model.vision.state_dict().items()
        if k.startswith("tower.")
    }
    tower["vision_model.embeddings.position_ids"] = torch.arange(5)[None]
    tower["text_model.embeddings.token_embedding.weight"] = torch.zeros(3, 2)  # the text half is not used
    torch.save(tower, clip / "pytorch_model.bin")
    save_file(
        {k: v.contiguous() for k, v in model.vae.state_dict().items()},
        str(ip2p / "vae" / "diffusion_pytorch_model.safetensors"),
    )
    (ip2p / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(
            {
                "_class_name": "EulerAncestralDiscreteScheduler",
                "beta_start": 0.00085,
                "beta_end": 0.012,
                "beta_schedule": "scaled_linear",
                "num_train_timesteps": 1000,
            }
        )
    )
    return OfficialLayout(llava, mgie, clip, ip2p)


def test_convert_official_layout_round_trip(tiny, tiny_pixels, tmp_path):
    layout = _write_official(tiny, tmp_path / "official")
    fingerprint = convert_official(layout, str(tmp_path / "converted"), preset_name="tiny", dtype=torch.float32)
    converted = MGIE.from_pretrained(str(tmp_path / "converted"))
    assert converted.fingerprint() == fingerprint
    assert np.array_equal(_pixels(converted), tiny_pixels)
    # plain LLaVA's own embedding and head are kept for the explain pass (the reference explains with them)
    llava_vocab = tiny.config.tokens.img_first_id
    assert converted.config.llm.explain_vocab_size == llava_vocab
    assert torch.equal(
        converted.explain_head.embed_tokens.weight, tiny.llm.get_input_embeddings().weight[:llava_vocab] + 0.5
    )
    assert torch.equal(converted.explain_head.lm_head.weight, tiny.llm.lm_head.weight[:llava_vocab] + 0.5)
    assert (tmp_path / "converted" / "explain.safetensors").exists()
    assert MGIE.from_pretrained(str(tmp_path / "converted"), parts={"edit"}).explain_head is None


@pytest.mark.parametrize("drop", ["edit_head.query", "conv_in.weight"])
def test_convert_names_a_missing_key(tiny, tmp_path, drop):
    layout = _write_official(tiny, tmp_path / "official", drop=drop)
    with pytest.raises(KeyError, match=rf"missing keys \['{drop.removeprefix('edit_head.')}'\]"):
        convert_official(layout, str(tmp_path / "converted"), preset_name="tiny", dtype=torch.float32)


def test_convert_refuses_pickled_code(tiny, tmp_path):
    layout = _write_official(tiny, tmp_path / "official")

    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    torch.save({"edit_head.query": Payload()}, layout.mgie_dir / "mllm.pt")
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        convert_official(layout, str(tmp_path / "converted"), preset_name="tiny", dtype=torch.float32)


def test_convert_command_line(tiny, tiny_pixels, tmp_path, capsys):
    from jobs.cli import main

    layout = _write_official(tiny, tmp_path / "official")
    out = tmp_path / "cli-converted"
    assert (
        main(
            [
                "convert",
                "--llava",
                str(layout.llava_dir),
                "--mgie",
                str(layout.mgie_dir),
                "--clip",
                str(layout.clip_dir),
                "--ip2p",
                str(layout.ip2p_dir),
                "--output",
                str(out),
                "--preset",
                "tiny",
                "--dtype",
                "float32",
            ]
        )
        == 0
    )
    assert "fingerprint" in capsys.readouterr().out
    assert np.array_equal(_pixels(MGIE.from_pretrained(str(out))), tiny_pixels)
    with pytest.raises(FileNotFoundError, match="clip_dir: directory not found"):
        main(
            [
                "convert",
                "--llava",
                str(layout.llava_dir),
                "--mgie",
                str(layout.mgie_dir),
                "--clip",
                str(tmp_path / "nope"),
                "--ip2p",
                str(layout.ip2p_dir),
                "--output",
                str(out),
            ]
        )
