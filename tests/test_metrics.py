"""Metrics library: hand-computed values on constructed images, agreement with independent
implementations, the model-based metrics against direct model calls, and loading metric models from paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.evaluation.metrics import (
    ALL_METRICS,
    MetricsConfig,
    MetricSuite,
    aggregate,
    alexnet_features,
    build_tiny_clip,
    build_tiny_dino,
    l1_distance,
    load_alexnet_features,
    markdown_table,
    ssim,
)
from pipeline.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess


def _const(rgb, size=(32, 32)) -> Image.Image:
    return Image.new("RGB", size, tuple(rgb))


def _noise(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def suite() -> MetricSuite:
    return MetricSuite.tiny(seed=0)


# ---------------------------------------------------------------------------------------------- L1 / SSIM


def test_l1_on_constructed_images():
    # per channel |10-40|, |20-20|, |30-0| -> mean 20 of 255
    assert l1_distance(_const((10, 20, 30)), _const((40, 20, 0))) == pytest.approx(20 / 255, abs=1e-7)
    # half the pixels differ by 255 in every channel -> 0.5
    half = np.zeros((32, 32, 3), np.uint8)
    half[:, 16:] = 255
    assert l1_distance(Image.fromarray(half), _const((255, 255, 255))) == pytest.approx(0.5, abs=1e-7)
    # the edited image is resized to the goal's size first (a constant image stays constant)
    assert l1_distance(_const((10, 20, 30), (64, 48)), _const((40, 20, 0), (32, 24))) == pytest.approx(
        20 / 255, abs=1e-6
    )
    assert l1_distance(_noise(1), _noise(1)) == 0.0


def test_ssim_on_constructed_images():
    # constant images: no variance, so SSIM is the luminance term (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 L)^2
    a, b, c1 = 51 / 255, 153 / 255, 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(_const((51, 51, 51)), _const((153, 153, 153))) == pytest.approx(expected, abs=1e-6)
    assert ssim(_noise(2), _noise(2)) == pytest.approx(1.0, abs=1e-9)
    # black against white: (0 + C1) / (0 + 1 + C1)
    assert ssim(_const((0, 0, 0)), _const((255, 255, 255))) == pytest.approx(c1 / (1 + c1), abs=1e-8)
    with pytest.raises(ValueError, match="at least 11"):
        ssim(_const((1, 1, 1), (8, 8)), _const((1, 1, 1), (8, 8)))


def test_ssim_agrees_with_scikit_image():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(3)
    for shape in [(40, 52, 3), (64, 64, 3)]:
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        y = np.clip(x.astype(int) + rng.integers(-40, 40, shape), 0, 255).astype(np.uint8)
        ref = structural_similarity(
            x / 255.0,
            y / 255.0,
            channel_axis=2,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        assert ssim(Image.fromarray(x), Image.fromarray(y)) == pytest.approx(ref, abs=1e-3)


# ---------------------------------------------------------------------------------------------- LPIPS


def _lpips_by_hand(features: torch.nn.Sequential, lin_weights: list[torch.Tensor], x, y) -> float:
    """LPIPS written out from the paper: unit-normalise each tap's channels, squared difference, 1x1
    weights, spatial mean, sum over the five ReLU taps of AlexNet."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    taps = {1, 4, 7, 9, 11}  # outputs of relu1..relu5 in torchvision's layer numbering

    def feats(img):
        h = ((img * 2 - 1) - shift) / scale
        out = []
        for i, layer in enumerate(features):
            h = layer(h)
            if i in taps:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    total = 0.0
    for fx, fy, w in zip(feats(x), feats(y), lin_weights):
        total += float(((fx - fy) ** 2 * w.view(1, -1, 1, 1)).sum(1).mean())
    return total


def test_lpips_matches_its_definition_and_is_zero_on_identity(suite):
    from pipeline.evaluation.metrics import to_unit_tensor

    x, y = _noise(4, (40, 40)), _noise(5, (40, 40))
    assert suite.lpips_distance(x, x) == 0.0
    d = suite.lpips_distance(x, y)
    assert d > 0 and d == pytest.approx(suite.lpips_distance(y, x), rel=1e-6)
    lin = [getattr(suite.lpips, f"lin{i}").model[-1].weight.detach().flatten() for i in range(5)]
    assert all((w >= 0).all() for w in lin)  # calibrated LPIPS weights are non-negative
    by_hand = _lpips_by_hand(_trunk(suite), lin, to_unit_tensor([x]), to_unit_tensor([y]))
    assert d == pytest.approx(by_hand, rel=1e-4)
    with pytest.raises(ValueError, match="at least 32"):
        suite.lpips_distance(_const((0, 0, 0), (16, 16)), _const((0, 0, 0), (16, 16)))


def _trunk(suite) -> torch.nn.Sequential:
    """The AlexNet layers inside torchmetrics' LPIPS, in order (its five slices)."""
    net = suite.lpips.net
    return torch.nn.Sequential(*[m for s in (net.slice1, net.slice2, net.slice3, net.slice4, net.slice5) for m in s])


def test_lpips_backbone_loads_a_torchvision_layout_state_dict(tmp_path):
    torch.manual_seed(7)
    trunk = alexnet_features()
    state = {f"features.{k}": v for k, v in trunk.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(4, 4)  # a full AlexNet checkpoint also has a classifier
    path = tmp_path / "alexnet.pth"
    torch.save(state, path)
    loaded = load_alexnet_features(str(path))
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(loaded(x), trunk(x))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(KeyError, match="not an AlexNet trunk"):
        load_alexnet_features(str(tmp_path / "wrong.pth"))


# ---------------------------------------------------------------------------------------------- CLIP / DINO


def test_clip_and_dino_scores_equal_direct_model_calls(suite):
    edited = [_noise(10), _noise(11), _noise(12)]
    goals = [_noise(10), _noise(13), None]
    texts = ["add a red hat", None, "make the sky blue"]
    out = suite.score(edited, goals, texts)
    assert set(out) == set(ALL_METRICS)
    # identical images -> cosine 1; rows without a goal or a text get None
    assert out["clip_i"][0] == pytest.approx(1.0, abs=1e-6) and out["dino"][0] == pytest.approx(1.0, abs=1e-6)
    assert out["l1"][2] is None and out["clip_i"][2] is None and out["dino"][2] is None
    assert out["clip_t"][1] is None and out["clip_t"][0] is not None

    # CLIP through transformers' own get_*_features path (text pooled at the end-of-text token)
    clip, tok, pre = build_tiny_clip(0)
    with torch.no_grad():
        img = clip.get_image_features(pixel_values=pre([edited[1], goals[1]]))
        img = getattr(img, "pooler_output", img)
        enc = tok([texts[2]], padding="max_length", max_length=77, return_tensors="pt")
        txt = clip.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        txt = getattr(txt, "pooler_output", txt)
        img2 = clip.get_image_features(pixel_values=pre([edited[2]]))
        img2 = getattr(img2, "pooler_output", img2)
    assert out["clip_i"][1] == pytest.approx(float(F.cosine_similarity(img[0], img[1], dim=0)), abs=1e-5)
    assert out["clip_t"][2] == pytest.approx(float(F.cosine_similarity(img2[0], txt[0], dim=0)), abs=1e-5)

    dino, dpre = build_tiny_dino(0)
    with torch.no_grad():
        cls = dino(pixel_values=dpre([edited[1], goals[1]])).last_hidden_state[:, 0]
    assert out["dino"][1] == pytest.approx(float(F.cosine_similarity(cls[0], cls[1], dim=0)), abs=1e-5)
    assert all(-1 <= v <= 1 for m in ("clip_i", "clip_t", "dino") for v in out[m] if v is not None)


def test_preprocess_follows_torchvision_resize_and_centre_crop():
    pre = Preprocess(resize=36, crop=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    # a 64 x 48 image: short side 48 -> 36, long side int(36 * 64 / 48) = 48; crop offsets (8, 2)
    arr = np.zeros((48, 64, 3), np.uint8)
    arr[:, :32] = 255  # left half white
    x = pre([Image.fromarray(arr)])
    assert x.shape == (1, 3, 32, 32)
    white = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    black = (0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    # after the crop, the white/black edge sits at column 24 - 8 = 16
    assert float(x[0, 0, 16, 2]) == pytest.approx(white, abs=1e-5)
    assert float(x[0, 0, 16, 30]) == pytest.approx(black, abs=1e-5)


def test_metric_models_load_from_paths(suite, tmp_path):
    clip, tok, _ = build_tiny_clip(0)
    clip.save_pretrained(tmp_path / "clip")
    tok.save_pretrained(tmp_path / "clip")
    (tmp_path / "clip" / "preprocessor_config.json").write_text(
        json.dumps({"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}})
    )
    dino, _ = build_tiny_dino(0)
    dino.save_pretrained(tmp_path / "dino")
    torch.manual_seed(2)  # the tiny suite's LPIPS trunk seed
    torch.save({f"features.{k}": v for k, v in alexnet_features().state_dict().items()}, tmp_path / "alex.pth")
    cfg = MetricsConfig(
        clip=str(tmp_path / "clip"),
        dino=str(tmp_path / "dino"),
        lpips_backbone=str(tmp_path / "alex.pth"),
        dino_preprocess=Preprocess(36, 32, IMAGENET_MEAN, IMAGENET_STD),
    )
    loaded = MetricSuite(cfg)
    edited, goals, texts = [_noise(20), _noise(21)], [_noise(22), _noise(20)], ["a cat", "a dog"]
    want, got = suite.score(edited, goals, texts), loaded.score(edited, goals, texts)
    for name in ALL_METRICS:
        assert got[name] == pytest.approx(want[name], abs=1e-5), name
    # the identity follows the weights, not the path
    (tmp_path / "copy").mkdir()
    for p in (tmp_path / "dino").iterdir():
        (tmp_path / "copy" / p.name).write_bytes(p.read_bytes())
    assert (
        MetricSuite(MetricsConfig(metrics=("dino",), dino=str(tmp_path / "copy"))).fingerprint()
        == MetricSuite(MetricsConfig(metrics=("dino",), dino=str(tmp_path / "dino"))).fingerprint()
    )


def test_config_errors_name_the_missing_flags():
    with pytest.raises(ValueError, match="--clip.*--dino|--dino.*--clip"):
        MetricsConfig(metrics=("clip_i", "dino", "l1")).validate()
    with pytest.raises(ValueError, match="subset"):
        MetricsConfig(metrics=("psnr",), tiny_seed=0).validate()
    assert MetricsConfig(metrics=("l1", "ssim")).validate().metrics == ("l1", "ssim")  # no models needed
    only_plain = MetricSuite(MetricsConfig(metrics=("l1", "ssim")))
    assert only_plain.clip is None and only_plain.lpips is None


def test_aggregate_and_markdown():
    table = aggregate({"l1": [0.1, None, 0.3], "clip_i": [None, None], "dino": [0.5, float("nan"), 0.7]})
    assert table["l1"]["mean"] == pytest.approx(0.2) and table["l1"]["count"] == 2
    assert table["l1"]["std"] == pytest.approx(0.1) and table["l1"]["better"] == "lower"
    assert table["clip_i"] == {"mean": None, "std": None, "count": 0, "better": "higher"}
    assert table["dino"]["count"] == 2
    md = markdown_table(table)
    assert "| l1 | 0.2000 | 0.1000 | 2 | lower |" in md and "| clip_i | n/a | n/a | 0 | higher |" in md
