"""WebDataset tar shards: samples in (grouped by key, as WebDataset does), samples out (deterministic bytes).

A sample is the run of consecutive tar members that share a key: `dir/0001.jpg`, `dir/0001.txt` ->
key `dir/0001`, fields `{"jpg": b"...", "txt": b"..."}`. The extension is everything after the first dot of
the file name, lower-cased (`0001.goal.png` -> `goal.png`).
"""

from __future__ import annotations

import io
import tarfile
from typing import BinaryIO, Iterable, Iterator


class ShardReadError(Exception):
    """The tar itself is broken (truncated, not a tar): rows after the break cannot be known."""

    def __init__(self, message: str, samples_read: int):
        super().__init__(message)
        self.samples_read = samples_read


def split_name(name: str) -> tuple[str, str]:
    """`dir/0001.goal.png` -> (`dir/0001`, `goal.png`)."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext.lower() if dot else ""


def unsafe_key(key: str) -> bool:
    """A key that would name a file outside an extraction folder: `/abs/x`, `../x`, `a/../../x`, `..\\x`."""
    return key.startswith(("/", "\\")) or ".." in key.replace("\\", "/").split("/")


def iter_samples(fileobj: BinaryIO) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yields (key, {ext: bytes}) in tar order, streaming (the tar is never held in memory whole).

    Raises ShardReadError when the tar is unreadable part-way; samples before the break were yielded.
    An I/O error of the store (OSError: a 500 after the client's retries, a dropped connection) is not a
    broken tar and propagates: the rows after it must be read again later, never written off as unreadable.
    """
    count = 0
    key: str | None = None
    fields: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = split_name(member.name)
                if not ext or k.rsplit("/", 1)[-1].startswith("."):
                    continue  # no extension, or a hidden file (e.g. macOS ._ entries)
                data = tar.extractfile(member).read()
                if k != key or ext in fields:  # a field given twice: the same key again, so a new sample
                    if key is not None:
                        count += 1
                        yield key, fields
                    key, fields = k, {}
                fields[ext] = data
    except (tarfile.TarError, EOFError, ValueError) as e:
        if key is not None:  # the sample in hand has every member read before the break
            count += 1
            yield key, fields
        raise ShardReadError(f"{type(e).__name__}: {e}", count) from e
    if key is not None:
        yield key, fields


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A tar of (name, bytes) in the given order with fixed metadata, so equal content gives equal bytes
    (a retried task rewrites an identical file)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_samples(samples: Iterable[tuple[str, dict[str, bytes]]]) -> bytes:
    """WebDataset tar bytes from (key, {ext: bytes}) samples: one member per field, `key.ext`."""
    return tar_bytes((f"{key}.{ext}", data) for key, fields in samples for ext, data in fields.items())


def read_members(data: bytes) -> dict[str, bytes]:
    """All members of a (small, already fetched) tar: {name: bytes}."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
