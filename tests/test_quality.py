"""Auto-QA below the pipeline: change and SSIM, the CLIP figures against CLIP's own forward pass, the bounds,
and the CLIP folder's checks and fingerprint (a tiny random CLIPModel saved with save_pretrained)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from pipeline.clip_qa import check_clip, clip_fingerprint, local_folder
from pipeline.config import EditConfig
from pipeline.identity import run_identity
from pipeline.outputs import box_mean
from pipeline.preprocess import CLIP_MEAN, CLIP_STD
from pipeline.quality import NEUTRAL_CAPTION, QAChecks, QASettings, QualityChecker, change_and_ssim
from tests.photos import photo


def _checks(work: np.ndarray, edited: np.ndarray) -> tuple[float, float]:
    change, ssim = change_and_ssim(torch.from_numpy(work[None]), torch.from_numpy(edited[None]))
    return float(change), float(ssim)


def _reference_ssim(x: np.ndarray, y: np.ndarray, r: int = 3) -> float:
    """SSIM of the luma with uniform (2r+1)^2 windows and clamped edges, in float64 (the definition)."""
    luma = np.array([0.299, 0.587, 0.114])
    a, b = (x.astype(np.float64) @ luma)[..., None], (y.astype(np.float64) @ luma)[..., None]  # (h, w, 1)
    ma, mb = box_mean(a, r), box_mean(b, r)
    va, vb, cov = box_mean(a * a, r) - ma * ma, box_mean(b * b, r) - mb * mb, box_mean(a * b, r) - ma * mb
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return float((((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))).mean())


def test_change_and_ssim_tell_a_no_op_from_an_edit_from_a_replacement():
    work = photo(64, 48, seed=7)
    assert _checks(work, work) == (0.0, 1.0)
    brighter = np.clip(work.astype(int) + 12, 0, 255).astype(np.uint8)
    change, ssim = _checks(work, brighter)
    assert 10 < change <= 12 and ssim > 0.9  # a tone edit: some change, structure kept
    other = photo(64, 48, seed=8, picture="astronaut")
    change, ssim = _checks(work, other)
    assert change > 30 and ssim < 0.3  # another picture altogether
    for edited in (brighter, other, 255 - work):  # float32 on the device, the float64 definition: equal
        assert _checks(work, edited)[1] == pytest.approx(_reference_ssim(work, edited), abs=1e-5)
    assert _checks(work, other)[0] == pytest.approx(np.abs(other.astype(float) - work).mean(), abs=1e-4)


def test_qa_bounds_include_the_clip_direction_and_need_a_clip_for_it():
    bounds = QAChecks(qa_min_change=1.0, qa_max_change=25.0)
    assert [bounds.qa_pass(c) for c in (0.2, 11.0, 40.0)] == [False, True, False]
    assert QAChecks().qa_pass(40.0, 0.9) is None  # no bound set: not checked
    direction = QAChecks(qa_clip="clip", qa_min_clip_dir=0.1)
    assert [direction.qa_pass(5.0, d) for d in (0.05, 0.2, None)] == [False, True, False]
    with pytest.raises(ValueError, match="--qa-min-change 5.0 and --qa-max-change 1.0"):
        QAChecks(qa_min_change=5.0, qa_max_change=1.0)
    with pytest.raises(ValueError, match="--qa-min-clip-dir must be in -1..1"):
        QAChecks(qa_min_clip_dir=1.5)
    with pytest.raises(ValueError, match="--qa-min-clip-dir needs --qa-clip PATH"):
        EditConfig.of(input="x", output="y", qa_min_clip_dir=0.1)


def _rows(n: int, size: tuple[int, int], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "pixels": photo(*size, seed=seed + i),
            "edited": rng.integers(0, 256, (size[1], size[0], 3), np.uint8),
            "expressive_instruction": f"a bright red {'sky' if i % 2 else 'car'} in the snow, number {i}",
            "instruction": "x",
        }
        for i in range(n)
    ]


def test_clip_figures_are_clip_t_and_instructpix2pix_directional_similarity(tiny_clip):
    """At CLIP's own input size (32 px here) the device preprocessing is only the normalisation, so the
    figures must equal what CLIPModel's own forward pass gives."""
    from transformers import AutoTokenizer, CLIPModel

    rows = _rows(3, (32, 32))
    QualityChecker(QASettings(str(tiny_clip))).score(rows)
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_clip)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    def pixels(key):
        return (torch.from_numpy(np.stack([r[key] for r in rows])).permute(0, 3, 1, 2).float() / 255 - mean) / std

    texts = [r["expressive_instruction"] for r in rows] + [NEUTRAL_CAPTION]
    tokens = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            pixel_values=torch.cat([pixels("edited"), pixels("pixels")]),
        )
    image, text = out.image_embeds.double(), out.text_embeds.double()  # unit vectors
    for i, row in enumerate(rows):
        assert row["qa_clip_t"] == pytest.approx(float(image[i] @ text[i]), abs=1e-5)
        d_image, d_text = image[i] - image[3 + i], text[i] - text[3]
        expected = float(d_image @ d_text / (d_image.norm() * d_text.norm()))
        assert row["qa_clip_dir"] == pytest.approx(expected, abs=1e-5)
        assert row["qa_change"] > 0 and -1 <= row["qa_ssim"] <= 1


def test_clip_figures_of_a_batch_equal_the_rows_alone_and_a_no_op_has_no_direction(tiny_clip):
    checker = QualityChecker(QASettings(str(tiny_clip)))
    batch = _rows(3, (64, 48), seed=5)  # 64 x 48: resized and centre-cropped to 32 on the device
    checker.score(batch)
    for row in _rows(3, (64, 48), seed=5):
        checker.score([row])
        twin = next(b for b in batch if b["expressive_instruction"] == row["expressive_instruction"])
        for name in ("qa_change", "qa_ssim", "qa_clip_t", "qa_clip_dir"):
            assert row[name] == pytest.approx(twin[name], abs=1e-5), name
    [no_op] = _rows(1, (64, 48))
    no_op["edited"] = no_op["pixels"]
    checker.score([no_op])
    assert no_op["qa_clip_dir"] == 0.0 and no_op["qa_change"] == 0.0
    plain = _rows(1, (64, 48))
    QualityChecker(QASettings()).score(plain)  # no CLIP: change and SSIM only
    assert "qa_clip_t" not in plain[0] and "qa_ssim" in plain[0]


def test_the_clip_fingerprint_is_its_files_not_its_path(tiny_clip, tmp_path, monkeypatch):
    import fsspec

    fingerprint = check_clip(str(tiny_clip))
    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_clip, copy)
    assert clip_fingerprint(str(copy)) == fingerprint
    memory = fsspec.filesystem("memory")  # any fsspec store: the same files, the same fingerprint
    for path in tiny_clip.iterdir():
        memory.pipe(f"/clip-export/{path.name}", path.read_bytes())
    monkeypatch.setenv("MGIE_CACHE", str(tmp_path / "cache"))
    assert check_clip("memory://clip-export") == fingerprint
    assert local_folder("memory://clip-export").parent == tmp_path / "cache" / "clip"  # copied once, loaded there

    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    assert clip_fingerprint(str(copy)) != fingerprint

    model = {"fingerprint": "f", "name": "tiny", "config": {"prompt": {}, "generation": {}}}
    sampler = type("S", (), {"to_dict": lambda self: {}})()
    plain = run_identity(EditConfig.of(input="x", output="y"), model, sampler, 1)
    cfg = EditConfig.of(input="x", output="y", qa_clip=str(tiny_clip), qa_min_clip_dir=0.1)
    with_clip = run_identity(cfg, model, sampler, 1, qa_clip=fingerprint)
    assert "qa_clip" not in plain["outputs"]  # runs without CLIP QA keep their fingerprint
    assert with_clip["outputs"]["qa_clip"] == fingerprint and str(tiny_clip) not in str(with_clip)


def test_a_clip_path_that_is_missing_or_not_a_clip_is_refused_with_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="--qa-clip .*: no such folder"):
        check_clip(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        check_clip(str(tmp_path / "empty"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "clip"}')  # no weights, no tokenizer
    with pytest.raises(ValueError, match="--qa-clip .*: not a CLIP model transformers can load"):
        check_clip(str(broken))
