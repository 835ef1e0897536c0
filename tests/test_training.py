"""Training: the objective's switches (which parameters learn), procedural triplets, and `mgie-batch train` on
Ray Train with CPU workers: the loss falls, checkpoints load with MGIE.from_pretrained, a crashed run resumes
on the same loss curve."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from jobs import cli
from mgie.model import MGIE
from mgie.training import MGIETrainModule, ObjectiveConfig, apply_head, build_batch, cfg_dropout, expected_trainable
from pipeline.shards import read_members
from pipeline.training.procedural import EDITS, EDITS_BY_NAME

RES = 32


def _photos(folder: str, names=("astronaut", "coffee")) -> str:
    import skimage.data

    os.makedirs(folder, exist_ok=True)
    for name in names:
        Image.fromarray(getattr(skimage.data, name)()).save(f"{folder}/{name}.png")
    return folder


def _group(name: str) -> str:
    """Parameter name -> the component group the reference's trainable/frozen split speaks of."""
    if name.startswith("llm.model.embed_tokens"):
        return "embed_tokens"
    if name.startswith("llm.lm_head"):
        return "lm_head"
    if name.startswith("llm."):
        return "llama_blocks"
    return name.split(".")[0]  # vision (CLIP + projector), edit_head, unet, vae


@pytest.fixture(scope="module")
def tiny():
    model = MGIE.from_preset("tiny", seed=0)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)) for _ in range(4)]
    return model, images[:2], images[2:]


def _grads(model, inputs, goals, objective: ObjectiveConfig, seed: int = 0):
    module = MGIETrainModule(model, objective)
    for p in module.parameters():
        p.grad = None
    batch = build_batch(
        model,
        inputs,
        goals,
        ["make it brighter", "add snow"],
        ["The photo is brighter.", "Snow covers the ground."],
        lgie=objective.lgie,
    )
    out = module(batch, torch.Generator().manual_seed(seed))
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return module, out, grads


@pytest.mark.parametrize(
    "switches, learns",
    [
        ({}, {"embed_tokens", "lm_head", "edit_head", "unet"}),
        ({"mode": "ft"}, {"embed_tokens", "lm_head", "edit_head", "unet"}),
        ({"mode": "fz"}, {"edit_head", "unet"}),
        ({"ins_loss": False}, {"embed_tokens", "edit_head", "unet"}),
        ({"mode": "ft", "ins_loss": False}, {"edit_head", "unet"}),
        ({"lgie": True}, {"embed_tokens", "lm_head", "edit_head", "unet"}),
        ({"llm_blocks": True}, {"embed_tokens", "lm_head", "llama_blocks", "edit_head", "unet"}),
        ({"llm_blocks": True, "mode": "fz"}, {"edit_head", "unet"}),
    ],
)
def test_switches_decide_which_parameters_receive_gradients(tiny, switches, learns):
    model, inputs, goals = tiny
    _, out, grads = _grads(model, inputs, goals, ObjectiveConfig(**switches))
    nonzero = {_group(n) for n, g in grads.items() if g.abs().sum() > 0}
    assert nonzero == learns == expected_trainable(ObjectiveConfig(**switches))  # CLIP, projector, VAE never learn
    assert {_group(n) for n in grads} == learns  # and frozen ones hold no gradient at all
    trained_ins = switches.get("ins_loss", True) and switches.get("mode", "e2e") != "fz"
    expected = 0.5 * out.edit + (out.ins if trained_ins else 0.0)
    assert torch.allclose(out.loss.detach(), torch.as_tensor(expected), atol=1e-6)


def test_ft_stops_the_edit_loss_at_the_edit_head_and_e2e_does_not(tiny):
    """FT: embed_tokens' gradient is that of L_ins alone; E2E: the edit loss adds to it."""
    model, inputs, goals = tiny
    embed = "llm.model.embed_tokens.weight"
    ft = _grads(model, inputs, goals, ObjectiveConfig(mode="ft"))[2][embed]
    ft_ins_only = _grads(model, inputs, goals, ObjectiveConfig(mode="ft", edit_weight=0.0))[2][embed]
    e2e = _grads(model, inputs, goals, ObjectiveConfig(mode="e2e"))[2][embed]
    e2e_ins_only = _grads(model, inputs, goals, ObjectiveConfig(mode="e2e", edit_weight=0.0))[2][embed]
    assert torch.equal(ft, ft_ins_only)
    assert not torch.allclose(e2e, e2e_ins_only)
    img_rows = model.config.tokens.img_ids
    assert not torch.allclose(e2e[img_rows], e2e_ins_only[img_rows])


def test_lgie_runs_no_vision_and_puts_no_image_tokens_in_the_prompt(tiny):
    model, inputs, goals = tiny
    calls = []
    hook = model.vision.register_forward_hook(lambda *a: calls.append(1))
    try:
        _grads(model, inputs, goals, ObjectiveConfig(lgie=True))
        assert calls == []
        _grads(model, inputs, goals, ObjectiveConfig())
        assert calls == [1]
    finally:
        hook.remove()
    plain = build_batch(model, inputs, goals, ["a", "b"], ["x", "y"])
    lgie = build_batch(model, inputs, goals, ["a", "b"], ["x", "y"], lgie=True)
    patch = model.config.tokens.im_patch_id
    assert (plain.input_ids == patch).sum(1).tolist() == [model.config.vision.num_patches] * 2
    assert (lgie.input_ids == patch).sum() == 0 and lgie.clip_pixels is None


def test_teacher_forced_conditioning_is_the_inference_conditioning(tiny):
    """The states training conditions on are those inference uses for the same text (express_with_text,
    left-padded): the right-padded gather picks the states that predict [IMG0..7]."""
    model, inputs, goals = tiny
    texts = ["The photo is brighter.", "Snow covers the whole ground now."]  # different lengths: padding
    module = MGIETrainModule(model, ObjectiveConfig())
    batch = build_batch(model, inputs, goals, ["make it brighter", "add snow"], texts)
    with torch.no_grad():
        _, states, rows = module.teacher_forced(batch)
        train_cond = apply_head(model.edit_head, states, rows)
        infer_cond = model.express_with_text(inputs, ["make it brighter", "add snow"], texts).conditioning
    assert torch.allclose(train_cond, infer_cond, atol=1e-5)
    labels = batch.labels[0][batch.labels[0] != -100].tolist()
    # the assistant turn ends with the 8 [IMG] tokens, then </s>, which is trained too (as the reference does)
    assert labels[-9:] == model.config.tokens.img_ids + [model.config.tokens.eos_id]


def test_frozen_features_are_computed_once_per_row_and_change_nothing(tiny):
    model, inputs, goals = tiny
    batch = build_batch(
        model, inputs, goals, ["make it brighter", "add snow"], ["The photo is brighter.", "Snow."], keys=["a", "b"]
    )
    plain = MGIETrainModule(model, ObjectiveConfig())
    cached = MGIETrainModule(model, ObjectiveConfig(), frozen_cache=True)
    calls = []
    encode = model.vae.encode
    model.vae.encode = lambda x: calls.append(len(x)) or encode(x)
    try:
        with torch.no_grad():
            first = cached(batch, torch.Generator().manual_seed(3))
            again = cached(batch, torch.Generator().manual_seed(3))
            reference = plain(batch, torch.Generator().manual_seed(3))
    finally:
        model.vae.encode = encode
    assert calls == [2, 2, 2, 2]  # goal and input for the first cached call and for the plain one; none again
    assert len(cached.frozen) == 4  # (clip, vae) x 2 rows
    assert torch.allclose(first.loss, reference.loss) and torch.allclose(again.loss, reference.loss)


def test_min_snr_gamma_weights_the_velocity_loss_per_row(tiny):
    model = MGIE.from_preset("tiny", seed=0)
    model.config.scheduler.prediction_type = "v_prediction"
    module = MGIETrainModule(model, ObjectiveConfig(min_snr_gamma=5.0))
    t = torch.tensor([0, 200, 999])
    a = module.noise_schedule.alphas_cumprod[t]
    snr = a / (1 - a)
    assert torch.allclose(module._snr_weight(t), torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))
    w = module._snr_weight(t)
    assert w[1] > 10 * w[0] and w[1] > 10 * w[2]  # both ends weigh little: the nearly clean and the noisiest steps
    assert torch.equal(MGIETrainModule(model, ObjectiveConfig())._snr_weight(t), torch.ones(3))


def test_weight_ema_averages_swaps_and_resumes():
    from pipeline.training.ema import WeightEMA

    net = torch.nn.Linear(2, 2)
    ema = WeightEMA({"net": net}, decay=0.5)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update()  # d = min(0.5, 2 / 11)
    d = 2 / 11
    assert torch.allclose(ema.shadow["net.weight"], d * start + (1 - d) * (start + 1))
    online = ema.online()
    ema.swap()
    assert torch.allclose(net.weight, d * start + (1 - d) * (start + 1))
    resumed = WeightEMA.resumed({"net": net}, 0.5, ema.updates, online)  # as a checkpoint load leaves it
    average = d * start + (1 - d) * (start + 1)
    assert torch.equal(net.weight, start + 1) and torch.allclose(resumed.shadow["net.weight"], average)
    with pytest.raises(ValueError, match="ema_decay"):
        WeightEMA({"net": net}, decay=1.0)


def test_the_edit_loss_predicts_velocity_when_the_scheduler_says_so(tiny):
    _, inputs, goals = tiny
    velocity_model = MGIE.from_preset("tiny", seed=0)
    velocity_model.config.scheduler.prediction_type = "v_prediction"
    eps = MGIETrainModule(MGIE.from_preset("tiny", seed=0), ObjectiveConfig())
    velocity = MGIETrainModule(velocity_model, ObjectiveConfig())
    latents, noise = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    t = torch.tensor([10, 999])
    assert torch.equal(eps._target(latents, noise, t), noise)
    a = velocity.noise_schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(velocity._target(latents, noise, t), a.sqrt() * noise - (1 - a).sqrt() * latents)
    batch = build_batch(velocity_model, inputs, goals, ["a", "b"], ["x", "y"])
    with torch.no_grad():  # same weights, batch and draws: only the target differs
        edit_eps = eps(batch, torch.Generator().manual_seed(0)).edit
        edit_velocity = velocity(batch, torch.Generator().manual_seed(0)).edit
    assert not torch.isclose(edit_eps, edit_velocity)
    velocity_model.config.scheduler.prediction_type = "sample"
    with pytest.raises(ValueError, match="not 'sample'"):
        MGIETrainModule(velocity_model, ObjectiveConfig())._target(latents, noise, t)


def test_guidance_dropout_bands():
    null_text, null_image = cfg_dropout(torch.tensor([0.01, 0.07, 0.12, 0.5]), ObjectiveConfig())
    assert null_text.tolist() == [True, True, False, False]
    assert null_image.tolist() == [False, True, True, False]


# ---------------------------------------------------------------------------------------- procedural data


def test_procedural_triplets_are_known_edits_and_deterministic(tmp_path):
    photos = _photos(str(tmp_path / "photos"), ("astronaut",))
    args = [
        "make-dataset",
        "--procedural",
        "--input",
        photos,
        "--resolution",
        "48",
        "--edits-per-image",
        "0",
        "--unit-rows",
        "5",
    ]
    assert cli.main([*args, "--output", str(tmp_path / "a")]) == 0
    assert cli.main([*args, "--output", str(tmp_path / "b")]) == 0
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["rows"] == len(EDITS) >= 10 and len(manifest["shards"]) == 3
    members = {}
    for rel in manifest["shards"]:
        data = (tmp_path / "a" / rel).read_bytes()
        assert data == (tmp_path / "b" / rel).read_bytes()  # same photos and seed: the same bytes
        members.update(read_members(data))
    for edit in EDITS:
        assert len(edit.phrasings) >= 3
        record = json.loads(members[f"astronaut-{edit.name}.json"])
        assert record["instruction"] in edit.phrasings and record["summary"] == edit.expressive
    arr = {
        e.name: np.asarray(Image.open(io.BytesIO(members[f"astronaut-{e.name}.goal.png"])), dtype=np.float32)
        for e in EDITS
    }
    src = np.asarray(Image.open(io.BytesIO(members["astronaut-brighten.input.png"])), dtype=np.float32)
    assert src.shape == (48, 48, 3)
    assert arr["brighten"].mean() > src.mean() + 10 > arr["darken"].mean() + 20
    assert (
        arr["contrast"].std() > src.std()
        and np.abs(np.diff(arr["blur"], axis=1)).mean()
        < np.abs(np.diff(src, axis=1)).mean()
        < np.abs(np.diff(arr["sharpen"], axis=1)).mean()
    )
    gray = arr["grayscale"]
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    assert np.allclose(arr["invert"], 255 - src)
    assert (arr["warmer"][..., 0] - arr["warmer"][..., 2]).mean() > (src[..., 0] - src[..., 2]).mean()
    assert (arr["cooler"][..., 0] - arr["cooler"][..., 2]).mean() < (src[..., 0] - src[..., 2]).mean()
    corner, centre = (slice(0, 6), slice(0, 6)), (slice(21, 27), slice(21, 27))
    assert arr["vignette"][corner].mean() / src[corner].mean() < arr["vignette"][centre].mean() / src[centre].mean()
    assert set(EDITS_BY_NAME) >= {
        "brighten",
        "darken",
        "contrast",
        "saturate",
        "grayscale",
        "sepia",
        "warmer",
        "cooler",
        "invert",
        "blur",
        "sharpen",
        "vignette",
    }


def test_procedural_reads_image_shards_and_draws_edits_per_photo(tmp_path):
    from pipeline.shards import write_samples
    from pipeline.training.procedural import ProceduralSettings, iter_photos, triplets

    def png(colour):
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), colour).save(buf, format="PNG")
        return buf.getvalue()

    (tmp_path / "in.tar").write_bytes(
        write_samples(
            [("a/one", {"png": png("red"), "txt": b"x"}), ("a/two", {"jpg": png("blue")}), ("a/none", {"txt": b"y"})]
        )
    )
    photos = list(iter_photos(str(tmp_path / "in.tar")))
    assert [name for name, _ in photos] == ["one", "two"]  # samples without an image are not photos
    rows = list(triplets(iter(photos), ProceduralSettings(resolution=16, edits_per_image=2, seed=1)))
    assert [k.split("-")[0] for k, _ in rows] == ["one", "one", "two", "two"]
    again = list(triplets(iter(photos), ProceduralSettings(resolution=16, edits_per_image=2, seed=1)))
    other = list(triplets(iter(photos), ProceduralSettings(resolution=16, edits_per_image=2, seed=2)))
    assert rows == again and rows != other  # seeded: the seed picks edits, phrasings and strengths
    assert Image.open(io.BytesIO(rows[0][1]["input.png"])).size == (16, 16)


def test_training_rows_from_make_dataset_layout(tmp_path):
    """make-dataset's fields (input.png, goal.*, json instruction + summary) and plain shards (png + txt); rows
    without a goal or an expressive instruction are not training rows."""
    from pipeline.shards import write_samples
    from pipeline.training.data import triplet_rows

    png = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(png, format="PNG")
    img = png.getvalue()
    meta = json.dumps({"instruction": "make it blue", "summary": "The photo turns blue."}).encode()
    shard = tmp_path / "part.tar"
    shard.write_bytes(
        write_samples(
            [
                ("made", {"input.png": img, "png": b"edited", "goal.png": img, "json": meta}),
                (
                    "plain",
                    {
                        "jpg": img,
                        "txt": b"add snow",
                        "goal.jpg": img,
                        "json": json.dumps({"expressive_instruction": "Snow falls."}).encode(),
                    },
                ),
                ("nogoal", {"input.png": img, "json": meta}),
                ("notext", {"png": img, "goal.png": img, "txt": b"x"}),
            ]
        )
    )
    rows = list(triplet_rows({"shard": str(shard)}))
    assert [(r["key"], r["instruction"], r["expressive"]) for r in rows] == [
        ("made", "make it blue", "The photo turns blue."),
        ("plain", "add snow", "Snow falls."),
    ]
    assert rows[0]["input"] == img  # the model's working input, not the edited output


def test_batch_plan_partitions_global_batches_and_skips_for_a_resume():
    from pipeline.training.data import BatchPlan

    rows = [{"i": i} for i in range(11)]
    plans = [BatchPlan(world_size=2, rank=r, batch_size=2, shuffle_buffer=4, seed=7) for r in range(2)]
    per_rank = [[[x["i"] for x in b] for b in p.epoch_batches(rows, epoch=0)] for p in plans]
    assert [len(b) for b in per_rank] == [2, 2]  # 11 rows, global batch 4: two steps, the rest dropped
    seen = [i for step in zip(*per_rank) for batch in step for i in batch]
    assert len(set(seen)) == 8 and seen != list(range(8))  # disjoint slices of a shuffled order
    assert per_rank[0] == [[x["i"] for x in b] for b in plans[0].epoch_batches(rows, epoch=0)]  # seeded
    assert per_rank[0] != [[x["i"] for x in b] for b in plans[0].epoch_batches(rows, epoch=1)]  # per epoch
    assert [[x["i"] for x in b] for b in plans[1].epoch_batches(rows, 0, skip_batches=1)] == per_rank[1][1:]


# ---------------------------------------------------------------------------------------- mgie-batch train

STEPS = 20


def _train_args(data: str, output: str, *extra: str) -> list[str]:
    # 6 rows, 2 workers x 1 row: 3 global batches per epoch, so a resume at step 10 starts mid-epoch
    # with an EMA and min-SNR weighting, so the resume test covers their state too
    return [
        "train",
        "--preset",
        "tiny",
        "--input",
        data,
        "--output",
        output,
        "--workers",
        "2",
        "--batch-size",
        "1",
        "--steps",
        str(STEPS),
        "--checkpoint-every",
        "5",
        "--ema-decay",
        "0.9",
        "--min-snr-gamma",
        "5",
        "--json",
        *extra,
    ]


def _metrics(output: str) -> list[dict]:
    with open(os.path.join(output, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def train_data(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("train")
    photos = _photos(str(root / "photos"))
    data = str(root / "data")
    assert (
        cli.main(
            [
                "make-dataset",
                "--procedural",
                "--input",
                photos,
                "--output",
                data,
                "--resolution",
                str(RES),
                "--edits-per-image",
                "3",
                "--unit-rows",
                "4",
            ]
        )
        == 0
    )
    return {"root": root, "data": data}


@pytest.fixture(scope="module")
def trained(train_data):
    output = str(train_data["root"] / "run")
    assert cli.main(_train_args(train_data["data"], output)) == 0
    return {"output": output, "metrics": _metrics(output)}


def test_training_loss_falls_and_is_logged(trained):
    rows = trained["metrics"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    first, last = rows[:5], rows[-5:]
    for name in ("loss", "ins", "edit"):  # overfitting 6 rows: both losses fall
        assert np.mean([r[name] for r in last]) < 0.9 * np.mean([r[name] for r in first]), name
    lrs = [r["lr"] for r in rows]
    assert max(lrs) == pytest.approx(2e-3) and lrs[0] < max(lrs) and lrs[-1] < 0.05 * max(lrs)  # warmup, cosine
    assert all(r["rows_per_s"] > 0 for r in rows)
    curve = Image.open(os.path.join(trained["output"], "loss_curve.png"))
    assert curve.size == (640, 400)


def test_checkpoint_loads_with_from_pretrained(trained):
    latest = json.loads(open(os.path.join(trained["output"], "checkpoints", "latest.json")).read())
    assert latest == {"step": STEPS, "path": f"checkpoints/step-{STEPS:08d}"}
    model = MGIE.from_pretrained(os.path.join(trained["output"], latest["path"]))
    start = MGIE.from_preset("tiny", seed=0)
    changed = {
        name: not all(
            torch.equal(a, b) for a, b in zip(getattr(model, name).parameters(), getattr(start, name).parameters())
        )
        for name in ("vision", "vae", "unet", "edit_head")
    }
    assert changed == {"vision": False, "vae": False, "unet": True, "edit_head": True}
    trained_llm, start_llm = dict(model.llm.named_parameters()), dict(start.llm.named_parameters())
    for name, p in trained_llm.items():  # embed_tokens and lm_head learn; the LLaMA blocks stay frozen
        learns = name.startswith(("model.embed_tokens", "lm_head"))
        assert torch.equal(p, start_llm[name]) != learns, name
    img_rows = model.llm.get_input_embeddings().weight[model.config.tokens.img_ids]
    assert torch.equal(model.edit_head.img_embeds, img_rows)  # the head's [IMG] copy follows the trained rows
    out = model.edit([Image.new("RGB", (RES, RES), "gray")], ["make it brighter"], num_inference_steps=2)
    assert out.images[0].size == (RES, RES)


@pytest.mark.slow
def test_crashed_run_resumes_on_the_same_loss_curve(train_data, trained):
    output = str(train_data["root"] / "crashed")
    assert cli.main(_train_args(train_data["data"], output, "--fail-at-step", "12")) == 1
    latest = json.loads(open(os.path.join(output, "checkpoints", "latest.json")).read())
    assert latest["step"] == 10  # steps 11 and 12 were trained, then lost with the crash
    assert [r["step"] for r in _metrics(output)] == list(range(1, 11))
    assert cli.main(_train_args(train_data["data"], output)) == 0
    resumed, straight = _metrics(output), trained["metrics"]
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(resumed, straight):
        assert (a["loss"], a["ins"], a["edit"], a["lr"]) == pytest.approx(
            (b["loss"], b["ins"], b["edit"], b["lr"]), rel=1e-6, abs=1e-7
        ), a["step"]


def test_train_refuses_other_settings_and_reruns_a_finished_run_as_a_no_op(train_data, trained, capsys):
    assert cli.main(_train_args(train_data["data"], trained["output"], "--mode", "ft")) == 2
    assert "mode: 'e2e' -> 'ft'" in capsys.readouterr().err
    assert cli.main(_train_args(train_data["data"], trained["output"])) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == STEPS and summary["seconds"] == 0.0
    assert _metrics(trained["output"]) == trained["metrics"]


def test_autoencoder_stage_trains_only_the_vae_and_stores_its_latent_scale(train_data):
    output = str(train_data["root"] / "autoencoder")
    args = [
        "train",
        "--preset",
        "tiny",
        "--stage",
        "autoencoder",
        "--input",
        train_data["data"],
        "--output",
        output,
        "--batch-size",
        "2",
        "--steps",
        "12",
        "--lr",
        "3e-3",
        "--checkpoint-every",
        "12",
        "--json",
    ]
    assert cli.main(args) == 0
    rows = _metrics(output)
    assert np.mean([r["edit"] for r in rows[-3:]]) < np.mean([r["edit"] for r in rows[:3]])  # reconstruction
    model = MGIE.from_pretrained(os.path.join(output, "checkpoints", "step-00000012"))
    start = MGIE.from_preset("tiny", seed=0)
    changed = {
        name: not all(
            torch.equal(a, b) for a, b in zip(getattr(model, name).parameters(), getattr(start, name).parameters())
        )
        for name in ("vision", "llm", "edit_head", "unet", "vae")
    }
    assert changed == {"vision": False, "llm": False, "edit_head": False, "unet": False, "vae": True}
    # 1 / running std of the latents, written where the sampler and the diffusion stage read it
    factor = model.config.vae.scaling_factor
    assert factor != start.config.vae.scaling_factor and model.vae.config.scaling_factor == pytest.approx(factor)


def test_workers_get_absolute_local_paths_and_the_run_record_keeps_them_as_given(monkeypatch, tmp_path):
    # Ray Train workers run in Ray's own folder: a relative --output put every checkpoint there, not here
    from pipeline.training.run import TrainConfig, for_workers

    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(input="data", output="runs/a", model="runs/ae/checkpoints/step-00000100")
    sent = for_workers(cfg)
    assert (sent.input, sent.output, sent.model) == (
        str(tmp_path / "data"),
        str(tmp_path / "runs/a"),
        str(tmp_path / "runs/ae/checkpoints/step-00000100"),
    )
    assert for_workers(TrainConfig(input="s3://b/t", output="s3://b/o", model="mgie-tiny-init")) == TrainConfig(
        input="s3://b/t", output="s3://b/o", model="mgie-tiny-init"
    )
    assert cfg.identity()["input"] == "data"  # the identity is computed from the settings as given
