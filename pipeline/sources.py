"""Input kinds: WebDataset tars, manifests (Parquet, CSV, JSONL) and folders of images, as one stream of samples.

Every source yields what a tar gives (`pipeline.shards.iter_samples`): (key, {field: bytes}) in a fixed
order, so decode, the model stages, the ledger and the commit protocol do not know which kind they read.
A row is addressed by (source URL, row index) exactly as a tar row is, so resume, --retry-errors and the
ledger work unchanged. Sources must not change under a run (row indexes are positions in them).

    tar       s3://b/in/shard-000.tar         one sample per run of members sharing a key
    manifest  s3://b/m.parquet|.csv|.jsonl    one sample per row: image (URL, path, bytes or an HF datasets
                                              {"bytes", "path"} struct) + instruction column; the other
                                              columns become the sample's json (a `seed` column is honoured)
    folder    s3://b/photos/                  (trailing slash) one sample per image file in sorted path order,
                                              with the sibling <name>.txt / <name>.json as its instruction

A manifest row whose image cannot be fetched is yielded as `Unfetched` fields: read turns it into an error
row (stage `fetch`) instead of failing the shard.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from pipeline.http_fetch import resolve_row_path
from pipeline.location import Location, Reach
from pipeline.shards import ShardReadError

MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl", ".ndjson")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SIDECAR_SUFFIXES = (".txt", ".json")
IMAGE_COLUMNS = ("url", "image")  # img2dataset's `url`, HF datasets' `image`
# an editing dataset may carry both: `instruction` is the edit, `caption` (img2dataset) describes the picture
INSTRUCTION_COLUMNS = ("instruction", "caption")
KEY_COLUMN = "key"


@dataclass(frozen=True)
class SourceOptions:
    """How manifest rows map to samples, and how their images are fetched."""

    image_column: str | None = None  # None: the first of IMAGE_COLUMNS present
    instruction_column: str | None = None  # None: the first of INSTRUCTION_COLUMNS present (or --instruction)
    key_column: str | None = None  # None: `key` if present, else the row index
    fetch_timeout_s: float = 30.0  # per image request, the whole request (a trickling answer included)
    fetch_retries: int = 3  # attempts per image after the first, with backoff (not for a missing file)
    fetch_threads: int = 16  # images fetched at once per read task (order is kept)
    # per image, all attempts, backoffs and redirects together: a slow store cannot hold a read task for ever
    fetch_deadline_s: float = 120.0
    # HTTP(S) rows may reach non-public addresses: all of them (--allow-private-urls), or these networks
    allow_private_urls: bool = False
    allowed_networks: tuple[str, ...] = ()

    def identity(self) -> dict[str, Any]:
        """What changes the outputs (column choices); fetch settings do not."""
        return {
            "image_column": self.image_column,
            "instruction_column": self.instruction_column,
            "key_column": self.key_column,
        }


class Unfetched(dict):
    """The fields of a row whose image could not be read; `reason` says which row, which URL and why."""

    def __init__(self, fields: dict[str, bytes], reason: str):
        super().__init__(fields)
        self.reason = reason

    def __reduce__(self):  # pickles with its reason (dict subclasses otherwise drop attributes set in __init__)
        return (Unfetched, (dict(self), self.reason))


def source_kind(url: str) -> str:
    """`tar`, `manifest` or `folder` (a URL ending in '/': a folder of images)."""
    if url.endswith("/"):
        return "folder"
    if url.lower().endswith(MANIFEST_SUFFIXES):
        return "manifest"
    return "tar"


def iter_source(source: Location, options: SourceOptions, batch: int = 64) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, fields) of one source in row order; raises FileNotFoundError when the source is not there and
    ShardReadError when it is unreadable part-way (rows before the break were yielded). The images a manifest
    or folder names are fetched the way the source itself is reached."""
    kind = source_kind(source.url)
    if kind == "tar":
        from pipeline.shards import iter_samples

        with source.open() as f:
            yield from iter_samples(f)
    elif kind == "manifest":
        yield from _fetched(_manifest_rows(source, options), source, options, batch)
    else:
        yield from _fetched(_folder_rows(source), source, options, batch)


# ------------------------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class Columns:
    image: str
    instruction: str | None
    key: str | None


def pick_columns(url: str, names: list[str], options: SourceOptions, need_instruction: bool = True) -> Columns:
    """The manifest's image / instruction / key columns; a ValueError naming the file, the columns it has and
    the flag to pass when one is missing."""

    def pick(flag: str, given: str | None, defaults: tuple[str, ...], required: bool) -> str | None:
        if given is not None:
            if given not in names:
                raise ValueError(f"manifest {url} has no column {given!r} ({flag}); its columns: {names}")
            return given
        found = next((c for c in defaults if c in names), None)
        if found is None and required:
            raise ValueError(
                f"manifest {url} has no {flag[2:].replace('-column', '')} column: looked for "
                f"{', '.join(map(repr, defaults))}; its columns: {names}. Pass {flag} NAME."
            )
        return found

    image = pick("--image-column", options.image_column, IMAGE_COLUMNS, True)
    instruction = pick("--instruction-column", options.instruction_column, INSTRUCTION_COLUMNS, need_instruction)
    key = pick("--key-column", options.key_column, (KEY_COLUMN,), False)
    return Columns(image, instruction, key)


def manifest_columns(manifest: Location) -> list[str]:
    """Column names of a manifest from its schema, header or first line (cheap: no full read)."""
    fs, path = manifest.fs()
    suffix = _suffix(manifest.url)
    with fs.open(path, "rb") as f:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(f).schema_arrow.names)
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        if suffix == ".csv":
            return next(csv.reader(text), [])
        for line in text:
            if line.strip():
                row = json.loads(line)
                return list(row) if isinstance(row, dict) else []
    return []


def manifest_rows_count(manifest: Location) -> int | None:
    """Rows of a Parquet manifest from its footer; None for text manifests (counting means reading them)."""
    if _suffix(manifest.url) != ".parquet":
        return None
    import pyarrow.parquet as pq

    fs, path = manifest.fs()
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


@dataclass
class _Row:
    """A manifest row before its image is fetched."""

    key: str
    fields: dict[str, bytes]
    image: bytes | str | None  # bytes in hand, a URL to fetch, or None (no image)
    error: str | None = None
    origin: str = "image"  # where the image reference came from, for messages: "column 'url'", "file"
    sidecars: dict[str, str] = field(default_factory=dict)  # field -> URL fetched with the image (folders)


def _manifest_rows(manifest: Location, options: SourceOptions) -> Iterator[_Row]:
    url = manifest.url
    cols = pick_columns(url, manifest_columns(manifest), options, need_instruction=False)
    for index, record in enumerate(_records(manifest)):
        if isinstance(record, str):  # a JSONL line that is not a JSON object
            yield _Row(f"{index:09d}", {}, None, record)
            continue
        key = record.get(cols.key) if cols.key else None
        key = safe_key(str(key)) if key not in (None, "") else f"{index:09d}"
        fields: dict[str, bytes] = {}
        instruction = record.get(cols.instruction) if cols.instruction else None
        if isinstance(instruction, str):
            fields["txt"] = instruction.encode("utf-8")
        rest = {k: v for k, v in record.items() if k not in (cols.image, cols.instruction) and _jsonable(v)}
        if rest:
            fields["json"] = json.dumps(rest, sort_keys=True, default=str, ensure_ascii=False).encode()
        image, error = _image_ref(record.get(cols.image), url, cols.image)
        yield _Row(key, fields, image, error, origin=f"column {cols.image!r}")


def _records(manifest: Location) -> Iterator[dict[str, Any] | str]:
    url = manifest.url
    fs, path = manifest.fs()
    read = 0  # rows yielded before a break, for the error row that stands for the rest

    def rows() -> Iterator[dict[str, Any] | str]:
        with fs.open(path, "rb") as f:
            suffix = _suffix(url)
            if suffix == ".parquet":
                import pyarrow.parquet as pq

                for batch in pq.ParquetFile(f).iter_batches(batch_size=256):
                    yield from batch.to_pylist()
                return
            text = io.TextIOWrapper(f, encoding="utf-8", newline="")
            if suffix == ".csv":
                for record in csv.DictReader(text):
                    yield {k: (v if v != "" else None) for k, v in record.items()}
                return
            for number, line in enumerate(text, 1):
                if not line.strip():
                    continue  # blank lines are not rows (an editor's trailing newline must not shift indexes)
                try:
                    record = json.loads(line)
                except ValueError as e:
                    yield f"line {number} is not JSON: {e}"
                    continue
                yield record if isinstance(record, dict) else f"line {number} is not a JSON object"

    try:
        for record in rows():
            read += 1
            yield record
    except (UnicodeDecodeError, csv.Error) as e:
        raise ShardReadError(f"manifest {url} is unreadable: {type(e).__name__}: {e}", read) from e
    except Exception as e:
        if type(e).__name__ in ("ArrowInvalid", "ArrowException"):  # not a Parquet file, or a broken one
            raise ShardReadError(f"manifest {url} is unreadable: {e}", read) from e
        raise


def _image_ref(value: Any, manifest: str, column: str) -> tuple[bytes | str | None, str | None]:
    """(bytes or URL, error) from a manifest cell: a URL/path string, raw bytes, or HF's {"bytes", "path"}."""
    if isinstance(value, dict):  # HF datasets Image feature: bytes when embedded, else a path
        if value.get("bytes"):
            return bytes(value["bytes"]), None
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return (bytes(value), None) if value else (None, f"column {column!r} is empty")
    if isinstance(value, str) and value.strip():
        return resolve_row_path(value.strip(), manifest, column)
    return None, f"column {column!r} is empty: no image URL, path or bytes in this row"


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list))


def safe_key(key: str) -> str:
    """A key usable as an output member name: `key.png` and `key.json` must split back to `key`, so dots in
    the last path part become '_' (a key column of file names like `img_01.jpg` would break that)."""
    head, _, tail = key.rpartition("/")
    tail = tail.replace(".", "_")
    return f"{head}/{tail}" if head else tail


# --------------------------------------------------------------------------------------------- folders


def folder_listing(folder: Location) -> dict[str, dict[str, str]]:
    """{key: {ext: path}} of a folder of images and sidecars, keys in sorted order, hidden files left out."""
    fs, root = folder.fs()
    root = root.rstrip("/")
    groups: dict[str, dict[str, str]] = {}
    for path in sorted(fs.find(root)):
        rel = path[len(root) :].lstrip("/")
        name = rel.rsplit("/", 1)[-1]
        stem, dot, ext = name.rpartition(".")
        if not dot or not stem or name.startswith(".") or f".{ext.lower()}" not in IMAGE_SUFFIXES + SIDECAR_SUFFIXES:
            continue
        key = rel[: len(rel) - len(ext) - 1]
        groups.setdefault(key, {})[ext.lower()] = path
    return {k: v for k, v in sorted(groups.items()) if any(f".{e}" in IMAGE_SUFFIXES for e in v)}


def _folder_rows(folder: Location) -> Iterator[_Row]:
    from pipeline.storage import with_scheme

    url = folder.url
    fs, root = folder.fs()
    if not fs.exists(root.rstrip("/")):
        raise FileNotFoundError(url)
    for key, files in folder_listing(folder).items():
        sidecars = {ext: with_scheme(url, path) for ext, path in files.items() if f".{ext}" in SIDECAR_SUFFIXES}
        ext = next(e.lstrip(".") for e in IMAGE_SUFFIXES if e.lstrip(".") in files)
        yield _Row(safe_key(key), {}, with_scheme(url, files[ext]), origin="file in the folder", sidecars=sidecars)


# ---------------------------------------------------------------------------------------------- fetching


def _fetched(
    rows: Iterable[_Row], source: Location, options: SourceOptions, batch: int
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Fetches the images of `batch` rows at a time on a thread pool and yields them in row order."""
    with ThreadPoolExecutor(max_workers=max(1, options.fetch_threads)) as pool:
        chunk: list[_Row] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) == batch:
                yield from _fetch_chunk(chunk, pool, source, options)
                chunk = []
        yield from _fetch_chunk(chunk, pool, source, options)


def _fetch_chunk(
    chunk: list[_Row], pool: ThreadPoolExecutor, source: Location, options: SourceOptions
) -> Iterator[tuple[str, dict[str, bytes]]]:
    def one(row: _Row) -> tuple[str, dict[str, bytes]]:
        if row.error is not None:
            return row.key, Unfetched(row.fields, row.error)
        fields = dict(row.fields)
        for name, url in row.sidecars.items():  # on this pool too: one request per sidecar adds up serially
            try:
                fields[name] = fetch(source.at(url), options)
            except Exception as e:  # noqa: BLE001 - the row's error, never the shard's
                return row.key, Unfetched(fields, f"cannot fetch {url} (sidecar): {_reason(e)}")
        if isinstance(row.image, bytes):
            return row.key, {**fields, image_field(row.image, ""): row.image}
        try:
            data = fetch(source.at(row.image), options)
        except Exception as e:  # noqa: BLE001 - the row's error, never the shard's: say which image and why
            return row.key, Unfetched(
                fields,
                f"cannot fetch {row.image} ({row.origin}): {_reason(e)}; "
                f"fix the URL/path or the store's access, then --retry-errors",
            )
        return row.key, {**fields, image_field(data, row.image): data}

    yield from pool.map(one, chunk)


def fetch(image: Location, options: SourceOptions, resolver=None) -> bytes:
    """The bytes at `image` (local path, s3://, http(s)://, any fsspec URL) with a timeout per request, retries
    with backoff and a deadline over all of them; a missing file or a refused request is not retried (it would
    not change). HTTP(S) goes through `pipeline.http_fetch` (address checks on every hop; `resolver` stands in
    for DNS in tests)."""
    from pipeline import http_fetch

    url = image.url
    deadline = time.monotonic() + options.fetch_deadline_s
    policy = http_fetch.AddressPolicy(options.allow_private_urls, options.allowed_networks)
    attempt = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no image within {options.fetch_deadline_s:g} s, retries included (--fetch-deadline)")
        try:
            if url.startswith(("http://", "https://")):
                return http_fetch.get(url, policy, min(options.fetch_timeout_s, remaining), resolver)
            fs, path = image.fs()
            if getattr(fs, "async_impl", False):  # s3fs and others: fsspec cancels the request at `timeout`
                return fs.cat_file(path, timeout=min(options.fetch_timeout_s, remaining))
            return fs.cat_file(path)
        except (FileNotFoundError, PermissionError, IsADirectoryError):
            raise
        except Exception as e:
            if type(e).__name__ == "FSTimeoutError":
                e = TimeoutError(f"no answer within {options.fetch_timeout_s:g} s (--fetch-timeout)")
            status = getattr(e, "status", None)
            if attempt >= options.fetch_retries or (isinstance(status, int) and 400 <= status < 500 and status != 429):
                raise e from None
            time.sleep(max(0.0, min(8.0, 0.25 * 2**attempt, deadline - time.monotonic())))
            attempt += 1


def _reason(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError):
        return "not found"
    from pipeline.http_fetch import URLRefused

    if isinstance(e, URLRefused):
        return str(e)  # already one line that names the rule and the flag
    text = re.sub(r"\s+", " ", str(e)).strip() or type(e).__name__
    return f"{type(e).__name__}: {text[:200]}"


def image_field(data: bytes, name: str) -> str:
    """The sample field for image bytes: from their signature, else the file name's extension, else jpg."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    ext = name.rsplit(".", 1)[-1].lower() if "." in name.rsplit("/", 1)[-1] else ""
    return ext if f".{ext}" in IMAGE_SUFFIXES else "jpg"  # decode reports bytes that are no image


def _suffix(url: str) -> str:
    return next(s for s in MANIFEST_SUFFIXES if url.lower().endswith(s))


def check_manifests(urls: Iterable[str], reach: Reach, options: SourceOptions, need_instruction: bool) -> None:
    """Before any work: every manifest has the columns the run needs (a ValueError naming the file and the
    flag otherwise), so a wrong column name fails in the driver at once rather than as an error per row."""
    for url in urls:
        if source_kind(url) == "manifest":
            try:
                names = manifest_columns(reach.at(url))
            except (ValueError, UnicodeDecodeError) as e:
                raise ValueError(f"manifest {url} is unreadable: {type(e).__name__}: {e}") from None
            pick_columns(url, names, options, need_instruction)


def count_rows(source: Location) -> int | None:
    """Rows of a source when they are cheap to know before reading it: a Parquet footer, a folder listing;
    None for tars and text manifests (knowing means reading them whole)."""
    kind = source_kind(source.url)
    if kind == "manifest":
        return manifest_rows_count(source)
    if kind == "folder":
        return len(folder_listing(source))
    return None
