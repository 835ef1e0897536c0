"""WebDataset tar shards: samples in (grouped by key, as WebDataset does), samples out (deterministic bytes).

A sample is the run of consecutive tar members that share a key: `dir/0001.jpg`, `dir/0001.txt` ->
key `dir/0001`, fields `{"jpg": b"...", "txt": b"..."}`. The extension is everything after the first dot of
the file name, lower-cased (`0001.goal.png` -> `goal.png`).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from typing import BinaryIO, Iterable, Iterator

from pipeline.refusals import Refused


class ShardReadError(Exception):
    """The tar itself is broken (truncated, not a tar): rows after the break cannot be known.

    `samples_read` samples were yielded before the break; the shard's raw bytes (all of them: the stream is
    drained) were `bytes_read` long with this `sha256`, so a later run can tell whether a grown file still
    starts with exactly these bytes (a partial upload that was finished) or is something else.
    """

    def __init__(self, message: str, samples_read: int, bytes_read: int = 0, sha256: str = ""):
        super().__init__(message)
        self.samples_read, self.bytes_read, self.sha256 = samples_read, bytes_read, sha256

    def __reduce__(self):  # picklable with every field (Ray hands exceptions between processes)
        return type(self), (str(self), self.samples_read, self.bytes_read, self.sha256)


END_OF_ARCHIVE = 1024  # two 512-byte zero blocks close every POSIX tar
_TAIL_KEEP = 64 * 1024  # bytes kept from the end of the stream: enough to see the end-of-archive blocks


class CountingReader:
    """The raw shard stream, counted and hashed as tarfile reads it, with its last bytes kept.

    tarfile accepts a stream that simply stops at a member boundary (a partial upload) as a complete archive;
    the count and the kept tail let `iter_samples` check that the end-of-archive blocks were really there.
    """

    def __init__(self, raw: BinaryIO):
        self.raw, self.total, self.tail = raw, 0, b""
        self._hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.total += len(data)
        self._hash.update(data)
        self.tail = (self.tail + data)[-_TAIL_KEEP:]
        return data

    def drain(self) -> None:
        """Reads what tarfile left (record padding, or everything after a break) so `total` is the size."""
        while self.read(1 << 20):
            pass

    def sha256(self) -> str:
        return self._hash.hexdigest()

    def ends_archive_at(self, offset: int) -> bool:
        """The stream holds the two zero blocks at `offset`, where tarfile stopped reading headers."""
        if self.total < offset + END_OF_ARCHIVE:
            return False  # the stream ended first: no end-of-archive, the upload was cut
        start = offset - (self.total - len(self.tail))
        if start < 0:
            return True  # far more bytes followed; tarfile stops early only at a zero block
        return self.tail[start : start + END_OF_ARCHIVE].count(0) == END_OF_ARCHIVE


class InputShardChanged(Refused, ValueError):
    """An input shard is not the size it had when the run was planned: it was rewritten under the run."""


def split_name(name: str) -> tuple[str, str]:
    """`dir/0001.goal.png` -> (`dir/0001`, `goal.png`)."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext.lower() if dot else ""


def unsafe_key(key: str) -> bool:
    """A key that would name a file outside an extraction folder: `/abs/x`, `../x`, `a/../../x`, `..\\x`."""
    return key.startswith(("/", "\\")) or ".." in key.replace("\\", "/").split("/")


def iter_samples(fileobj: BinaryIO, expected_size: int | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yields (key, {ext: bytes}) in tar order, streaming (the tar is never held in memory whole).

    Raises ShardReadError when the tar is unreadable part-way or lacks its end-of-archive blocks (an upload
    cut at a member boundary, which tarfile itself accepts); samples before the break were yielded. A sample
    the break may have cut short (the break fell inside it, or right after it, where more of its members may
    have followed) is not yielded: it is part of the unreadable rest, never a row with fields missing.
    An I/O error of the store (OSError: a 500 after the client's retries, a dropped connection) is not a
    broken tar and propagates: the rows after it must be read again later, never written off as unreadable.
    `expected_size` (the size the run planned with): a stream of another length raises InputShardChanged.
    """
    reader = CountingReader(fileobj)
    count = 0
    key: str | None = None
    fields: dict[str, bytes] = {}
    reading: str | None = None  # key of the member being read when a break comes
    try:
        with tarfile.open(fileobj=reader, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = split_name(member.name)
                if not ext or k.rsplit("/", 1)[-1].startswith("."):
                    continue  # no extension, or a hidden file (e.g. macOS ._ entries)
                reading = k
                data = tar.extractfile(member).read()
                reading = None
                if k != key or ext in fields:  # a field given twice: the same key again, so a new sample
                    if key is not None:
                        count += 1
                        yield key, fields
                    key, fields = k, {}
                fields[ext] = data
            reader.drain()
            _check_size(reader, expected_size)
            if getattr(tar.fileobj, "comptype", "tar") == "tar" and not reader.ends_archive_at(tar.offset):
                raise tarfile.ReadError(
                    f"no end-of-archive blocks: the tar stops after {reader.total} bytes (an incomplete upload?)"
                )
    except InputShardChanged:
        raise  # a ValueError too, but not a broken tar: the job stops
    except (tarfile.TarError, EOFError, ValueError) as e:
        if key is not None and reading is not None and reading != key:
            count += 1  # the break came inside the next sample's member: the one in hand is whole
            yield key, fields
        reader.drain()
        _check_size(reader, expected_size)
        raise ShardReadError(f"{type(e).__name__}: {e}", count, reader.total, reader.sha256()) from e
    if key is not None:
        yield key, fields


def _check_size(reader: CountingReader, expected_size: int | None) -> None:
    if expected_size is not None and reader.total != expected_size:
        raise InputShardChanged(
            f"the shard is {reader.total} bytes now, {expected_size} when the run was planned: "
            f"it was rewritten during the run; run the same command again once it is final"
        )


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
