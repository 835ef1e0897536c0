"""The weights' licence: `convert` records it in the checkpoint, a run records it in run.json, and a
non-commercial licence (the official MGIE weights are CC-BY-NC-4.0) is said once when `edit` starts."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from mgie.model import MGIE
from pipeline.editors import ModelSpec
from tests.test_mgie_checkpoint import _write_official


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The tiny model written in the official layout and converted by the command line, as a user would."""
    from jobs.cli import main

    root = tmp_path_factory.mktemp("licence")
    layout = _write_official(MGIE.from_preset("tiny", seed=0), root / "official")
    outs = {}
    for name, extra in (("official", []), ("apache", ["--licence", "Apache-2.0"])):
        outs[name] = root / f"converted-{name}"
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
                    str(outs[name]),
                    "--preset",
                    "tiny",
                    "--dtype",
                    "float32",
                    *extra,
                ]
            )
            == 0
        )
    return outs


def test_convert_records_the_licence_in_the_checkpoint(converted):
    official = json.loads((converted["official"] / "licence.json").read_text())
    assert official["name"] == "CC-BY-NC-4.0" and official["commercial_use"] is False
    assert ModelSpec(str(converted["official"])).licence() == official
    assert ModelSpec(str(converted["apache"])).licence() == {"name": "Apache-2.0", "commercial_use": True}
    assert ModelSpec("tiny").licence() is None and ModelSpec("noop").licence() is None  # no real weights
    # the licence changes no output: both checkpoints are the same model
    manifests = [json.loads((converted[n] / "weights.json").read_text()) for n in ("official", "apache")]
    assert manifests[0]["fingerprint"] == manifests[1]["fingerprint"]


def _shard(path, n: int = 2) -> None:
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(buf, format="PNG")
            for name, data in ((f"r{i}.png", buf.getvalue()), (f"r{i}.txt", b"brighter")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,noted",
    [("official", True), ("apache", False)],
)
def test_edit_records_the_licence_in_run_json_and_names_a_non_commercial_one_once(
    name, noted, converted, ray_local, tmp_path, capfd
):
    # capfd, not capsys: the status lines go to the terminal's own file descriptor (a copy of fd 2 taken
    # before the run's log takes fd 2 over), which only a descriptor-level capture sees
    from jobs.cli import main

    _shard(tmp_path / "in-000.tar")
    out = tmp_path / "out"
    assert (
        main(
            [
                "edit",
                "--input",
                str(tmp_path / "in-000.tar"),
                "--output",
                str(out),
                "--model",
                str(converted[name]),
                "--resolution",
                "32",
                "--steps",
                "1",
                "--resources",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    said = capfd.readouterr()
    record = json.loads((out / "run.json").read_text())
    assert record["licence"] == ModelSpec(str(converted[name])).licence()
    lines = [line for line in (said.out + said.err).splitlines() if "non-commercial use only" in line]
    assert len(lines) == (1 if noted else 0), said.out + said.err
    if noted:
        assert "CC-BY-NC-4.0" in lines[0] and str(converted[name]) in lines[0]
