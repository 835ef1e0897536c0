"""Settings declared once (pipeline.settings, pipeline.config): the identity of runs written before the
grouped configs reads as the same configuration, the flags are derived from the groups, every setting
has one group, and the Python API runs what the command line runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Literal

import pytest

from jobs.cli import build_parser
from jobs.edit import config_from_args
from pipeline.config import GROUPS, SETTING_GROUP, EditConfig, IOSettings, SamplingSettings
from pipeline.editors import ModelSpec
from pipeline.identity import identity_diff, resolve_identity
from pipeline.outputs import OutputSettings
from pipeline.quarantine import QuarantineSettings
from pipeline.settings import add_flags, check_choices, from_args, identity_of, setting, settings_of
from pipeline.sources import SourceOptions

# written by the code before the grouped configs (2026-12-02): flat EditConfig keywords, and command lines
RECORDED = json.loads((Path(__file__).parent / "data" / "run-identities-2026-12-02.json").read_text())


def _config(case: dict) -> EditConfig:
    if "argv" in case:
        return config_from_args(build_parser().parse_args(case["argv"]))
    flat = dict(case["settings"])
    objects = {"model": ModelSpec, "source": SourceOptions, "quarantine": QuarantineSettings}
    given = {name: cls(**flat.pop(name)) for name, cls in objects.items() if name in flat}
    return EditConfig.of(input="in.tar", output="out", **flat, **given)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_runs_written_before_the_grouped_configs_keep_their_fingerprint(name):
    run = resolve_identity(_config(RECORDED[name]), None, lambda: 0.0)
    assert identity_diff(RECORDED[name]["identity"], json.loads(json.dumps(run.identity))) == []
    assert run.fingerprint == RECORDED[name]["fingerprint"]


def test_each_setting_has_one_group_and_one_flag():
    names = [f.name for cls in GROUPS.values() for f, _ in settings_of(cls)]
    assert len(names) == len(set(names)) == len(SETTING_GROUP)
    flags = [meta.flag for cls in (*GROUPS.values(), ModelSpec, QuarantineSettings) for _, meta in settings_of(cls)]
    flags = [f for f in flags if f]
    assert len(flags) == len(set(flags))
    # every flag of the edit command comes from a group, the source options or the job's own few
    parser = build_parser()
    edit = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "edit")[1]
    declared = set(flags) | {"--help", "--json", "--dry-run", "--verbose", "--expressive"}
    own = {"--image-column", "--instruction-column", "--key-column", "--fetch-timeout", "--fetch-deadline"}
    own |= {"--allow-private-urls", "--summarizer", "--summarizer-seed", "--summarize-batch-size", "-h"}
    given = {s for a in edit._actions for s in a.option_strings}
    assert given - declared - own == set()


def test_a_new_setting_is_one_field():
    """A field declared with its flag gets its flag, its default in --help, its choices, its place in the
    identity, and a refusal in Python, with no other line written."""

    @dataclasses.dataclass(frozen=True)
    class Group:
        mode: Literal["a", "b"] = setting("a", flag="--mode", identity=True, help="the mode")
        extra: int = setting(0, flag="--extra", identity=True, omit_default=True, help="more")
        speed: float | None = setting(None, flag="--speed", help="not in the identity")

        def __post_init__(self):
            check_choices(self)

    parser = argparse.ArgumentParser()
    add_flags(parser, Group)
    assert "(default: a)" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])
    group = from_args(Group, parser.parse_args(["--mode", "b", "--speed", "2"]))
    assert group == Group(mode="b", speed=2.0)
    assert identity_of(group) == {"mode": "b"}  # extra at its default is left out, speed never joins
    assert identity_of(Group(extra=3)) == {"mode": "a", "extra": 3}
    with pytest.raises(ValueError, match="--mode must be one of a, b"):
        Group(mode="c")


def test_job_defaults_show_in_help():
    for job, shown in (
        ("eval", ("(default: crop)", "(default: work)", "(default: png)")),
        ("edit", ("(default: fit)",)),
    ):
        help_text = " ".join(build_parser()._subparsers._group_actions[0].choices[job].format_help().split())
        for text in shown:
            assert text in help_text, (job, text)


def test_the_python_api_is_the_command_line():
    argv = ["edit", "--input", "a.tar", "--output", "out", "--model", "tiny", "--resize", "crop", "--steps", "2"]
    from_cli = config_from_args(build_parser().parse_args(argv))
    from_python = EditConfig(
        io=IOSettings(input="a.tar", output="out"),
        model=ModelSpec(source="tiny"),
        sampling=SamplingSettings(steps=2),
        outputs=OutputSettings(resize="crop"),
    )
    assert from_cli == from_python == EditConfig.of(input="a.tar", output="out", resize="crop", steps=2)


def test_unknown_and_bad_settings_are_refused_by_name():
    with pytest.raises(TypeError, match="unknown setting 'resise'"):
        EditConfig.of(input="a", output="b", resise="crop")
    with pytest.raises(ValueError, match="--resize must be one of fit, crop, reference"):
        EditConfig.of(input="a", output="b", resize="square")
    with pytest.raises(ValueError, match="--layout must be one of"):
        EditConfig.of(input="a", output="b", layout="diagonal")


def test_a_setting_beside_its_whole_group_changes_that_group():
    cfg = EditConfig.of(input="a.tar", output="out", resize="crop")
    trial = EditConfig.of(**{**cfg.__dict__, "limit": 5, "quality": 80})
    assert trial.io == IOSettings(input="a.tar", output="out", limit=5)
    assert trial.outputs == OutputSettings(resize="crop", quality=80)
    assert dataclasses.replace(trial, io=cfg.io, outputs=cfg.outputs) == cfg


def test_the_models_store_is_reached_as_the_endpoint_says_from_python_as_from_the_command_line():
    endpoint = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    from_python = EditConfig.of(
        input="s3://b/a.tar", output="s3://b/out", model=ModelSpec("s3://b/model"), endpoint_url="http://127.0.0.1:9000"
    )
    argv = ["edit", "--input", "s3://b/a.tar", "--output", "s3://b/out", "--model", "s3://b/model"]
    from_cli = config_from_args(build_parser().parse_args([*argv, "--endpoint-url", "http://127.0.0.1:9000"]))
    assert from_python.model.storage_options == from_cli.model.storage_options == endpoint
    # options given with the model stand
    given = ModelSpec("s3://b/model", storage_options={"anon": True})
    assert EditConfig.of(input="a", output="b", model=given, endpoint_url="http://x").model.storage_options == {
        "anon": True
    }
