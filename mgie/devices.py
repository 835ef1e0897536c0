"""Where a model runs and at what precision: the one resolver every model spec and job uses.

    device = resolve_device("auto")                            # cuda when this process sees a GPU, else cpu
    dtype = resolve_dtype("auto", device)                      # float16 on cuda, float32 elsewhere
    dtype = resolve_dtype("auto", device, half=torch.bfloat16)  # T5 (overflows in float16), bf16 training

Settings spell a precision `auto`, `float16`, `bfloat16` or `float32` (`fp16`, `bf16`, `fp32` too). `auto` asks
for half precision only on CUDA: CPU kernels in half precision are slow or missing.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
PRECISIONS = ("auto", *DTYPES)
_SHORT_NAMES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def resolve_device(name: str | torch.device = "auto", gpu: bool | None = None) -> torch.device:
    """`auto` -> cuda when there is a GPU, else cpu; any other name as torch spells it (cpu, cuda, cuda:1).

    `gpu` says whether there is one where the model will run (the driver decides for actors on other
    machines); left None, this process's torch is asked."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if (torch.cuda.is_available() if gpu is None else gpu) else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None


def resolve_dtype(precision: str, device: str | torch.device = "cpu", half: torch.dtype = torch.float16) -> torch.dtype:
    """The dtype a precision setting names; `auto` is `half` on cuda and float32 on any other device."""
    name = _SHORT_NAMES.get(precision, precision)
    if name == "auto":
        return half if resolve_device(device).type == "cuda" else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(
            f"precision must be one of {', '.join(PRECISIONS)} (or fp16, bf16, fp32), got {precision!r}"
        ) from None


def dtype_name(dtype: torch.dtype) -> str:
    """float16, bfloat16, float32: how run identities and settings spell a dtype."""
    return str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def building_at(device: torch.device, dtype: torch.dtype | None = None) -> Iterator[None]:
    """Modules made inside the block get their parameters on `device`, in `dtype` when it is a float type:
    no float32 copy of billions of weights on the host first. The default dtype is restored on the way out."""
    previous = torch.get_default_dtype()
    try:
        if dtype is not None and dtype.is_floating_point:
            torch.set_default_dtype(dtype)
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)
