"""The fast engine settings change speed, not pixels; the engine benchmark runs end to end (tiny, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mgie import MGIE, preprocess_image


def _work_images(n=3):
    rng = np.random.default_rng(7)
    return [preprocess_image(Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)), 32) for _ in range(n)]


@pytest.mark.slow
def test_engine_settings_match_the_plain_path_in_fp32():
    plain = MGIE.from_preset("tiny", seed=0)
    fast = MGIE.from_preset("tiny", seed=0).optimize(channels_last=True, compile_unet=True, compile_backend="aot_eager")
    images = _work_images()
    cond = plain.express(images, ["a", "b", "c"]).conditioning
    seeds = [1, 2, 3]
    expected = np.stack([plain.sample([images[i]], cond[i : i + 1], [seeds[i]], 3, output_type="np")[0] for i in range(3)])
    got = fast.sample(images, cond, seeds, 3, output_type="np")
    assert np.abs(got - expected).max() <= 1e-5
    # the compiled module is still saved as the plain UNet
    assert set(fast._components()["unet"].state_dict()) == set(plain.unet.state_dict())


def test_engine_benchmark_smoke(tmp_path):
    from bench.engine import main

    report = main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "engine-cpu-tiny.json").read_text())
    assert saved["ratios"] == pytest.approx(report["ratios"])
    for name in ("stock-bs1@2", "stock-bs2@2", "engine@2", "engine@3", "stock-bs1@3"):
        path = saved["paths"][name]
        assert path["images"] > 0 and path["seconds"] > 0 and path["images_per_s"] > 0, name
        assert set(path["stages"]) == {"decode", "mllm", "diffusion", "encode"}
    # same conditioning, same seeds, fp32: the engine reproduces the stock diffusers pipeline
    same = saved["psnr_db"]["engine_vs_stock_diffusion_same_conditioning"]
    assert same is None or same >= 60
