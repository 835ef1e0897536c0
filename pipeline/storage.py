"""Where shards and outputs live: local folders, file://, s3:// (any endpoint) and every other fsspec store.

    store = Store.open(Reach("http://127.0.0.1:9000").at("s3://bucket/run1"))
    store.write_atomic("a/b.json", b"...")       # readers see the whole file or none of it
    expand_braces("shard-{000..099}.tar")         # the patterns --input names (pipeline.inputs resolves them)

How a URL is reached (its S3 endpoint) is a Location's (pipeline.location). Everything here is plain
functions over fsspec so a Ray task can rebuild a Store from its (picklable) url + options.
"""

from __future__ import annotations

import errno
import os
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec

from pipeline import faults
from pipeline.layout import TMP_PREFIX, OutputLayout
from pipeline.location import Location, is_local, strip_file_scheme
from pipeline.refusals import Refused


class OutputStoreFull(OSError):
    """The output's disk or quota is full (ENOSPC / EDQUOT): the job stops; nothing half-written remains."""


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


@dataclass(frozen=True)
class Store:
    """An output (or input) prefix on one filesystem. Paths given to methods are relative to `url`."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, where: str | Location, options: dict[str, Any] | None = None) -> "Store":
        """The store at a Location (its options from its reach), or at a plain URL with explicit `options`."""
        where = where if isinstance(where, Location) else Location(where)
        url = where.absolute.url.rstrip("/")
        return cls(url, dict(options or where.options))

    # fsspec filesystems are cached per (class, options) by fsspec itself: calling this often is cheap
    @property
    def fs(self):
        return fsspec.core.url_to_fs(self.url, **self.options)[0]

    @property
    def root(self) -> str:
        return fsspec.core.url_to_fs(self.url, **self.options)[1].rstrip("/")

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def exists(self, rel: str) -> bool:
        fs, path = self.fs, self.path(rel)
        if not is_local(self.url):
            fs.invalidate_cache(path)  # s3fs answers from cached listings; other processes write here
        return fs.exists(path)

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Whole-file write that a reader (or a crash) never sees half done.

        Object stores make a single PUT visible all at once; on a local disk we write a temp file next to
        the target and rename it over, which POSIX makes atomic.
        """
        path = self.path(rel)
        fs = self.fs
        if is_local(self.url):
            directory, name = path.rsplit("/", 1)
            os.makedirs(directory, exist_ok=True)
            tmp = f"{directory}/{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    faults.maybe_fill_disk()
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except OSError as e:
                _remove_quietly(tmp)  # a full disk must not also collect half-written temporaries
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise OutputStoreFull(f"no space left writing {rel} under {self.url}") from e
                raise
        else:
            fs.pipe_file(path, data)

    def list(self, rel: str) -> list[str]:
        """Names (not paths) of the files directly under `rel`; [] when it does not exist."""
        fs = self.fs
        path = self.path(rel)
        try:
            entries = fs.ls(path, detail=False, refresh=True) if not is_local(self.url) else fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def delete(self, rel: str) -> None:
        try:
            self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            pass


# ----------------------------------------------------------------------------------------- input patterns

_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """Expands `{000..099}` ranges (zero padding kept) and `{a,b,c}` lists, left to right, in order.

    expand_braces("s-{00..02}.tar") == ["s-00.tar", "s-01.tar", "s-02.tar"]
    """
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    body = m.group(1)
    head, tail = pattern[: m.start()], pattern[m.end() :]
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)(?:\.\.(\d+))?", body)
    if rng:
        a, b = int(rng.group(1)), int(rng.group(2))
        step = int(rng.group(3) or 1)
        if step <= 0:
            raise ValueError(f"brace range {{{body}}} in {pattern!r}: the step must be positive")
        width = len(rng.group(1)) if rng.group(1).lstrip("-").startswith("0") else 0
        values = range(a, b + 1, step) if a <= b else range(a, b - 1, -step)
        items = [str(v).zfill(width) for v in values]
    elif "," in body:
        items = body.split(",")
    else:
        raise ValueError(f"cannot expand {{{body}}} in {pattern!r}: use {{START..END}} or {{a,b,c}}")
    return [out for item in items for out in expand_braces(head + item + tail)]


class OutputInsideInput(Refused, ValueError):
    """The output overlaps the input: a run would read (or its orphan sweep delete) its own files."""


def _norm(url: str) -> str:
    return os.path.abspath(strip_file_scheme(url)) if is_local(url) else url.rstrip("/")


_FILE_SUFFIXES = (".tar", ".parquet", ".csv", ".jsonl", ".ndjson")  # inputs that are files, not folders


def _reads_output(pattern: str, out: str) -> str | None:
    """What of the output at `out` one input pattern (braces expanded) would read, or None. A file reads
    only itself, so an output beside it is safe; a folder is read whole (its tars, else manifests, else
    images), so any output inside it is read back by a later run; a glob reads what it matches."""
    if any(c in pattern for c in "*?["):
        from fsspec.utils import glob_translate

        regex = re.compile(glob_translate(_norm(pattern)))
        unit_files = [f"{out}/{folder}/unit{suffix}" for folder, suffix in OutputLayout.UNIT_FOLDERS.items()]
        return next((f for f in unit_files if regex.fullmatch(f)), None)
    if pattern.rstrip("/").lower().endswith(_FILE_SUFFIXES):
        return None
    folder = _norm(pattern)
    return folder if out == folder or out.startswith(folder.rstrip("/") + "/") else None


def check_output_outside_inputs(spec: str | list[str], shards: list[str], output: str) -> None:
    """Refuses an output that the same --input would read back: one equal to or inside an input folder, or
    whose files an input glob matches; and input shards that lie in the output's own folders."""
    out = _norm(output)
    for part in spec.split() if isinstance(spec, str) else spec:
        for pattern in expand_braces(part):
            read = _reads_output(pattern, out)
            if read is None:
                continue
            if any(c in pattern for c in "*?["):
                raise OutputInsideInput(
                    f"--input {pattern} matches the files --output {output} writes ({read}): a later run with the "
                    f"same --input would read this run's outputs as input. Choose an output the pattern does not "
                    f"match."
                )
            raise OutputInsideInput(
                f"--output {output} is {'the' if out == read else 'inside the'} input folder {read}: a later run "
                f"over that folder would read this run's files as input. Choose an output outside {read}."
            )
    managed = OutputLayout(out).managed_urls()
    inside = [s for s in shards if _norm(s).startswith(managed)]
    if inside:
        raise OutputInsideInput(
            f"input shard {inside[0]} lies in the output folders of --output {output}: the run "
            f"would edit its own outputs, and its orphan sweep deletes files there."
        )


def with_scheme(url: str, path: str) -> str:
    """A path a filesystem of `url` listed, as a URL of the same kind: absolute for a local one, with the
    scheme for a remote one (fsspec lists `bucket/key`, not `s3://bucket/key`)."""
    if is_local(url):
        return os.path.abspath(path)
    scheme = url.split("://", 1)[0]
    return f"{scheme}://{path.lstrip('/')}" if not path.startswith(f"{scheme}://") else path
