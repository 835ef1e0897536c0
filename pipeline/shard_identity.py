"""Which bytes an input shard name stood for: a shard rewritten between runs must never be mixed.

Units are positions in a shard (rows index*U ...). If `in/f-000.tar` is replaced by other content under the
same name, a resumed run would skip the committed units of the old content and edit the rest of the new:
one output shard made of two inputs. So the first run to plan a shard records its identity in

    OutputLayout.INPUTS_RECORD    {"shards": {url: {"size": 10240, "kind": "etag", "version": "\"9b2c...\""}}}

and every later run compares: a changed shard is refused (`InputShardRewritten`, exit 2) naming the shard and
what changed. The identity is what the store gives for free when listing, never a hash of the content:

- S3 (and any store that reports one): size + ETag. The ETag changes with every new PUT of other bytes (the
  MD5 of a single-part upload; a hash of the part hashes for a multipart one), also when the size stays the
  same. LastModified is not used: its 1 s granularity can hide a quick rewrite.
- Local files: size + mtime in nanoseconds. Hashing would mean reading every shard twice; size + mtime is
  what make and rsync trust. A writer that restores an old mtime on new bytes of equal size defeats it.

One change is allowed: a shard whose committed units end in an unreadable tail (a partial upload) may grow,
if its first bytes are exactly the bytes that run read (sha256 of that prefix, kept in the commit record).
Then the upload was finished, and the rows past the old end are simply new.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.layout import OutputLayout
from pipeline.location import FROM_ENVIRONMENT, Location, Reach, is_local, strip_file_scheme
from pipeline.refusals import Refused
from pipeline.storage import Store

INPUTS_RECORD = OutputLayout.INPUTS_RECORD


class InputShardRewritten(Refused, ValueError):
    """An input shard holds other bytes than when this output's run first planned it."""


@dataclass(frozen=True)
class ShardIdentity:
    size: int
    kind: str  # "etag" | "mtime_ns" | "size" (a store that reports neither)
    version: str

    def changes_to(self, new: "ShardIdentity") -> str:
        """`size 10240 -> 12288 bytes, etag "a1" -> "b2"`; empty when equal."""
        parts = []
        if self.size != new.size:
            parts.append(f"size {self.size} -> {new.size} bytes")
        if (self.kind, self.version) != (new.kind, new.version):
            parts.append(
                f"{self.kind} {self.version} -> {new.kind} {new.version}"
                if self.kind == new.kind
                else f"{self.kind} {self.version} -> {new.kind} {new.version} (another kind of store?)"
            )
        return ", ".join(parts)


def identity_of(url: str, reach: Reach = FROM_ENVIRONMENT, info: dict[str, Any] | None = None) -> ShardIdentity:
    """`info`: the shard's entry of a fresh listing, when the caller has one (saves a request per shard)."""
    if is_local(url):
        st = os.stat(strip_file_scheme(url))
        return ShardIdentity(st.st_size, "mtime_ns", str(st.st_mtime_ns))
    if info is None:
        fs, path = reach.at(url).fs()
        fs.invalidate_cache(path)  # a cached listing would hide a rewrite
        try:
            info = fs.info(path)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"input shard {url} disappeared while the run was being planned; restore it or leave it out of --input"
            ) from None
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return ShardIdentity(int(info["size"]), "etag", str(etag))
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if mtime is not None:
        return ShardIdentity(int(info["size"]), "mtime", str(mtime))
    return ShardIdentity(int(info["size"]), "size", "")


def current_identities(
    shards: list[str], reach: Reach = FROM_ENVIRONMENT, threads: int = 16
) -> dict[str, ShardIdentity]:
    """Identity of every shard: one fresh listing per remote folder (ETag and size come with it), a request
    per shard only for what the listing lacks; a stat per local file."""
    listed = _listings(shards, reach, threads)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return dict(zip(shards, pool.map(lambda u: identity_of(u, reach, listed.get(u)), shards)))


def _listings(shards: list[str], reach: Reach, threads: int) -> dict[str, dict[str, Any]]:
    folders: dict[str, list[str]] = {}
    for url in shards:
        if not is_local(url):
            folders.setdefault(url.rsplit("/", 1)[0], []).append(url)

    def entries(folder: str) -> dict[str, dict[str, Any]]:
        fs, path = reach.at(folder).fs()
        by_name = {e["name"].rstrip("/").rsplit("/", 1)[-1]: e for e in fs.ls(path, detail=True, refresh=True)}
        return {
            url: by_name[url.rsplit("/", 1)[-1]]
            for url in folders[folder]
            if url.rsplit("/", 1)[-1] in by_name and by_name[url.rsplit("/", 1)[-1]].get("type") == "file"
        }

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return {url: info for found in pool.map(entries, folders) for url, info in found.items()}


def load_recorded(store: Store) -> dict[str, ShardIdentity]:
    if not store.exists(INPUTS_RECORD):
        return {}
    shards = json.loads(store.read_bytes(INPUTS_RECORD)).get("shards", {})
    return {url: ShardIdentity(**v) for url, v in shards.items()}


def prefix_sha256(shard: Location, length: int, chunk: int = 8 << 20) -> str:
    """sha256 of the first `length` bytes of a shard (fewer if it is shorter)."""
    digest, left = hashlib.sha256(), length
    with shard.open() as f:
        while left > 0:
            data = f.read(min(chunk, left))
            if not data:
                break
            digest.update(data)
            left -= len(data)
    return digest.hexdigest()


def _finished_upload(
    url: str, old: ShardIdentity, new: ShardIdentity, units: dict[int, dict[str, Any]], reach: Reach
) -> bool:
    """The shard was cut short when it was read (an unreadable tail of exactly `old.size` bytes) and now
    starts with those very bytes: a partial upload that has been finished."""
    tails = [u["unreadable_tail"] for u in units.values() if u.get("unreadable_tail")]
    return (
        len(tails) == 1
        and tails[0]["bytes"] == old.size < new.size
        and prefix_sha256(reach.at(url), old.size) == tails[0]["sha256"]
    )


def check_and_record(
    store: Store,
    current: dict[str, ShardIdentity],
    committed: dict[str, dict[int, dict[str, Any]]],
    reach: Reach = FROM_ENVIRONMENT,
) -> list[str]:
    """Refuses (InputShardRewritten) a shard whose bytes changed under committed rows; records the identity
    of every shard not seen before (and of a finished upload, or a changed shard nothing was committed
    from). Returns the shards whose recorded identity was updated."""
    recorded = load_recorded(store)
    changed, updated = [], []
    for url, new in current.items():
        old = recorded.get(url)
        if old is None or old == new:
            continue
        units = committed.get(url, {})
        if not units or _finished_upload(url, old, new, units, reach):
            updated.append(url)  # nothing of the old bytes is committed, or they are the new file's start
            continue
        changed.append(f"{url} ({old.changes_to(new)})")
    if changed:
        more = f" and {len(changed) - 1} more: {'; '.join(changed[1:4])}" if len(changed) > 1 else ""
        raise InputShardRewritten(
            f"input shard {changed[0]} changed since this output's run first read it{more}; refusing to mix rows "
            f"of the old and the new file. Put the original back, or edit the new one into a new --output."
        )
    new_entries = {url: ident for url, ident in current.items() if url not in recorded or url in updated}
    if new_entries:
        merged = {**recorded, **new_entries}
        body = {"shards": {url: asdict(ident) for url, ident in sorted(merged.items())}}
        store.write_atomic(INPUTS_RECORD, json.dumps(body, indent=1, sort_keys=True).encode())
    return updated
