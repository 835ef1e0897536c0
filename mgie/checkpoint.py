"""The mgie-batch checkpoint directory: config, tokenizer and one safetensors file per component.

    config.json            MGIEConfig
    weights.json           format version, sha256 of every weight file, the model fingerprint
    tokenizer/             tokenizer files (tokenizer.json, ...)
    vision.safetensors     CLIP vision tower (tower.*) and projector (projector.*)
    llm.safetensors        LLaMA decoder with the extended vocabulary
    edit_head.safetensors  EditMapper
    unet.safetensors       InstructPix2Pix UNet (8 input channels)
    vae.safetensors        VAE

The directory may live on any fsspec store (local path, file://, s3://, gs://, ...); remote
checkpoints are copied to a local cache once, keyed by their URL and recorded hashes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import fsspec
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

FORMAT = "mgie-batch/1"
COMPONENT_FILES = {
    "vision": "vision.safetensors",
    "llm": "llm.safetensors",
    "edit_head": "edit_head.safetensors",
    "unet": "unet.safetensors",
    "vae": "vae.safetensors",
}
# components a checkpoint may carry (hashed into the fingerprint when present)
OPTIONAL_COMPONENT_FILES = {"explain": "explain.safetensors"}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


EDGE = 1 << 22  # bytes hashed at each end of a large file by `hash_file_edges`


def hash_file_edges(h, path: str | os.PathLike, edge: int = EDGE) -> None:
    """Feeds hash `h` a file's content: all of it up to 2 * `edge` bytes, else its first and last `edge`
    bytes. A cheap identity of large weight files (changes to a checkpoint show without reading tens of GB);
    callers add the file's name and size themselves."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size <= 2 * edge:
            while block := f.read(edge):
                h.update(block)
            return
        h.update(f.read(edge))
        f.seek(size - edge)
        h.update(f.read(edge))


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def cache_root() -> Path:
    return Path(os.environ.get("MGIE_CACHE", Path.home() / ".cache" / "mgie-batch"))


def fetch_dir(url: str, storage_options: dict[str, Any] | None = None) -> Path:
    """Returns a local directory holding the checkpoint at `url` (copied once for remote stores)."""
    if not is_remote(url):
        path = Path(local_path(url))
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint directory not found: {url}")
        return path
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if not fs.exists(f"{root}/weights.json"):
        raise FileNotFoundError(f"no mgie-batch checkpoint at {url} (weights.json missing)")
    manifest = json.loads(fs.cat_file(f"{root}/weights.json"))
    key = hashlib.sha256((url + json.dumps(manifest, sort_keys=True)).encode()).hexdigest()[:24]
    return copy_to_cache(fs, root, cache_root() / key)


def file_sizes(fs, root: str) -> list[tuple[str, int]]:
    """(file name, size) of every file under `root` of filesystem `fs`, sorted: a remote folder's identity
    that costs one listing (a cache key, a run fingerprint), not a read of its files."""
    return sorted((p.rsplit("/", 1)[-1], int(info.get("size") or 0)) for p, info in fs.find(root, detail=True).items())


def copy_to_cache(fs, root: str, target: Path) -> Path:
    """Copies the folder `root` of filesystem `fs` to the local folder `target` once, and returns `target`.

    The copy goes to a temporary sibling folder that is renamed into place when complete, so a reader never
    sees half a copy and two processes copying the same folder at once (two actors on one node) do not
    write into each other's files: the first rename wins, the other copy is dropped.
    """
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".partial-"))
    try:
        fs.get(f"{root.rstrip('/')}/", str(staging) + "/", recursive=True)
        (staging / ".complete").touch()
        try:
            staging.rename(target)
        except OSError:
            if (target / ".complete").exists():
                return target  # another process finished the same copy first
            shutil.rmtree(target, ignore_errors=True)  # an unfinished copy left by a crashed process
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when the rename succeeded
    return target


@contextlib.contextmanager
def parameters_on_meta():
    """Builds modules with parameters on the meta device (no memory, no random init) while buffers stay
    real: non-persistent buffers (rotary frequencies, position ids) are not in any checkpoint."""
    original = torch.nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


# diffusers' fuse_qkv_projections adds `to_qkv` / `to_kv` layers beside to_q/to_k/to_v: a speed setting
# (MGIE.optimize), rebuilt from the separate projections, never part of a checkpoint
FUSED_PROJECTIONS = (".to_qkv.", ".to_kv.")


def save_state(module: torch.nn.Module, path: Path) -> None:
    # contiguous copies: safetensors refuses shared or strided storage
    state = {
        k: v.detach().contiguous().cpu()
        for k, v in module.state_dict().items()
        if not any(f in k for f in FUSED_PROJECTIONS)
    }
    save_file(state, str(path))


def align_clip_keys(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """transformers 4 nests CLIP vision weights under `vision_model.`, transformers 5 does not; map a
    state dict written by either onto the layout of the installed release."""
    nested = any(".vision_model." in k or k.startswith("vision_model.") for k in expected)
    out = {}
    for key, value in state.items():
        if nested and key.startswith("tower.") and not key.startswith("tower.vision_model."):
            key = "tower.vision_model." + key[len("tower.") :]
        elif not nested and key.startswith("tower.vision_model."):
            key = "tower." + key[len("tower.vision_model.") :]
        out[key] = value
    return out


def load_state(module: torch.nn.Module, path: Path, what: str) -> None:
    """Strict load: any missing or unexpected key fails, naming them."""
    expected = set(module.state_dict())
    state = align_clip_keys(load_file(str(path)), expected)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(
            f"{what} ({path.name}): {len(missing)} missing keys {missing[:20]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:20]}"
        )
    # assign=True: parameters built on the meta device take the loaded tensors as they are
    module.load_state_dict(state, strict=True, assign=True)


def read_rows(path: Path, name: str, rows: Iterable[int]) -> torch.Tensor:
    """Reads selected rows of one tensor without loading the whole file (e.g. the [IMG] embeddings)."""
    rows = list(rows)
    with safe_open(str(path), framework="pt") as f:
        if name not in f.keys():
            raise KeyError(f"{path.name}: missing key {name!r}")
        sl = f.get_slice(name)
        return torch.stack([sl[r] for r in rows])


LICENCE_FILE = "licence.json"  # the weights' licence; not in the fingerprint (it changes no output)
# the official MGIE weights (mgie_7b) are released for non-commercial use; `convert` records this by default
OFFICIAL_LICENCE = {
    "name": "CC-BY-NC-4.0",
    "commercial_use": False,
    "weights": "apple/ml-mgie mgie_7b with LLaVA-7B-v1, CLIP ViT-L/14 and InstructPix2Pix",
    "url": "https://creativecommons.org/licenses/by-nc/4.0/",
}


def licence_record(name: str) -> dict[str, Any]:
    """The licence.json of weights under licence `name` (an SPDX id such as CC-BY-NC-4.0 or Apache-2.0)."""
    if name == OFFICIAL_LICENCE["name"]:
        return dict(OFFICIAL_LICENCE)
    parts = {p.upper() for p in name.replace("_", "-").split("-")}
    return {"name": name, "commercial_use": not (parts & {"NC", "NONCOMMERCIAL"})}


def write_licence(directory: Path, licence: dict[str, Any]) -> None:
    (directory / LICENCE_FILE).write_text(json.dumps(licence, indent=2, sort_keys=True))


def read_licence(fs, root: str) -> dict[str, Any] | None:
    """The checkpoint's licence record, or None when it has none (weights written by `train`, older ones)."""
    path = f"{root.rstrip('/')}/{LICENCE_FILE}"
    return json.loads(fs.cat_file(path)) if fs.exists(path) else None


def write_manifest(directory: Path, fingerprint_extra: str = "") -> dict[str, Any]:
    names = list(COMPONENT_FILES.values()) + [n for n in OPTIONAL_COMPONENT_FILES.values() if (directory / n).exists()]
    files = {name: sha256_file(directory / name) for name in sorted(names)}
    config_hash = hashlib.sha256((directory / "config.json").read_bytes()).hexdigest()
    digest = hashlib.sha256(json.dumps({"config": config_hash, "files": files}, sort_keys=True).encode()).hexdigest()
    manifest = {"format": FORMAT, "files": files, "config_sha256": config_hash, "fingerprint": digest}
    (directory / "weights.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / "weights.json"
    if not path.exists():
        raise FileNotFoundError(f"{directory}: weights.json missing; not an mgie-batch checkpoint")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{directory}: checkpoint format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def upload_dir(local: Path, url: str, storage_options: dict[str, Any] | None = None) -> None:
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    # weights.json last: a reader that sees it sees a complete checkpoint
    for path in sorted(local.rglob("*"), key=lambda p: p.name == "weights.json"):
        if path.is_file():
            fs.put_file(str(path), f"{root}/{path.relative_to(local).as_posix()}")
