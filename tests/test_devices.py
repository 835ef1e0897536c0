"""One device and dtype resolver (mgie.devices) behind every model spec, the driver's precision check and training."""

from __future__ import annotations

import argparse

import pytest
import torch

from mgie.devices import PRECISIONS, building_at, dtype_name, resolve_device, resolve_dtype


def test_auto_device_is_cuda_where_a_gpu_is_and_named_devices_are_checked():
    assert resolve_device("auto", gpu=True) == torch.device("cuda")
    assert resolve_device("auto", gpu=False) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")  # this process
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        resolve_device("gpu")


def test_auto_precision_is_half_on_cuda_only_and_every_spelling_names_one_dtype():
    assert resolve_dtype("auto", "cuda") == torch.float16
    assert resolve_dtype("auto", "cuda:0", half=torch.bfloat16) == torch.bfloat16
    assert resolve_dtype("auto", "cpu", half=torch.bfloat16) == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == resolve_dtype("bf16") == torch.bfloat16  # named: any device
    assert resolve_dtype("fp32", "cuda") == resolve_dtype("float32") == torch.float32
    assert [dtype_name(resolve_dtype(p, "cuda")) for p in PRECISIONS] == ["float16", "float16", "bfloat16", "float32"]
    with pytest.raises(ValueError, match="precision must be one of auto, float16, bfloat16, float32"):
        resolve_dtype("half")


def test_modules_built_inside_building_at_are_made_there_and_the_default_dtype_comes_back():
    with building_at(torch.device("meta"), torch.float16):
        layer = torch.nn.Linear(4, 4)
    assert layer.weight.device.type == "meta" and layer.weight.dtype == torch.float16
    assert torch.get_default_dtype() == torch.float32
    with pytest.raises(RuntimeError), building_at(torch.device("cpu"), torch.bfloat16):
        raise RuntimeError("a failed build")
    assert torch.get_default_dtype() == torch.float32


def test_the_driver_and_the_model_specs_agree_on_what_auto_means(monkeypatch):
    from pipeline.editors import ModelSpec
    from pipeline.identity import resolve_precision
    from pipeline.summarize import SummarizerSpec

    tiny = ModelSpec("tiny")
    no_cluster = lambda: pytest.fail("a GPU preset needs no question to the cluster")  # noqa: E731
    assert resolve_precision(tiny, "preset", "24gb-per-gpu", no_cluster) == {"device": "cuda", "dtype": "float16"}
    assert resolve_precision(tiny, "preset", "cpu", no_cluster) == {"device": "cpu", "dtype": "float32"}
    assert resolve_precision(tiny, "preset", "auto", lambda: 0) == {"device": "cpu", "dtype": "float32"}
    assert resolve_precision(ModelSpec("tiny", device="cuda:1", dtype="bfloat16"), "preset", "auto", lambda: 1) == {
        "device": "cuda",
        "dtype": "bfloat16",
    }  # the ordinal is no identity
    with pytest.raises(ValueError, match="got 'gpu'"):
        resolve_precision(ModelSpec("tiny", device="gpu"), "preset", "auto", lambda: 1)

    # in an actor: `auto` is this process's GPU, else the CPU at float32 (the summarizer: bfloat16 on cuda)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = ModelSpec("tiny").load({"edit"})
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    summarizer = SummarizerSpec("tiny").load()
    assert summarizer.device == torch.device("cpu") and summarizer.model.dtype == torch.float32


def test_the_edit_command_offers_the_resolver_precisions():
    from jobs.edit import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    dtype = next(a for a in parser._actions if a.dest == "model_dtype")
    assert tuple(dtype.choices) == PRECISIONS  # listed there so that --help imports no torch
