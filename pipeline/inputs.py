"""What `--input` names: patterns (repeated flags, a list file, a legacy space-separated string) and the
sources they resolve to (tar shards, manifests, folders of images; see pipeline.sources).

    patterns = input_patterns(["s3://b/in/shard-{000..009}.tar", "/data/my photos/"], reach)
    sources = resolve_sources(patterns, reach)  # absolute URLs, in the order given; a folder of images ends in '/'
    sources = checked_sources(cfg, store)   # the same, with every check a run makes before writing anything

A folder is read as the first kind it holds, in this order: tar shards, manifests, images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from pipeline import terminal
from pipeline.location import FROM_ENVIRONMENT, Location, Reach, is_local
from pipeline.preflight import check_s3
from pipeline.sources import IMAGE_SUFFIXES, MANIFEST_SUFFIXES, check_manifests
from pipeline.storage import check_output_outside_inputs, expand_patterns, with_scheme

if TYPE_CHECKING:
    from pipeline.config import EditConfig
    from pipeline.storage import Store

SHARD_SUFFIXES = (".tar",)


def input_patterns(spec: str | Sequence[str], reach: Reach = FROM_ENVIRONMENT) -> list[str]:
    """The patterns an input spec names. A sequence (repeated --input) is taken as given, one pattern per
    item, so a path with spaces stays one path. `@FILE` reads one pattern per line (blank lines and `#`
    comments skipped). A single string is one pattern when it names something as a whole (a path with
    spaces); otherwise it is split on whitespace, as earlier versions did."""
    items = [spec] if isinstance(spec, str) else list(spec)
    if isinstance(spec, str) and len(spec.split()) > 1 and not _names_something(reach.at(spec.strip())):
        items = spec.split()
    out: list[str] = []
    for item in items:
        item = item.strip()
        if item.startswith("@"):
            out += _list_file(reach.at(item[1:]))
        elif item:
            out.append(item)
    if not out:
        raise ValueError("--input is empty: give a shard pattern, a manifest, a folder or @LIST_FILE")
    return out


def checked_sources(cfg: "EditConfig", store: "Store") -> list[str]:
    """The sources of `cfg.io.input`, checked before anything is written: every S3 location usable, every
    pattern matched, the output outside the inputs, every manifest holding the columns the run reads."""
    reach = cfg.io.reach
    patterns = input_patterns(cfg.io.input, reach)
    terminal.status(f"reading the input list: {' '.join(patterns)[:200]}")
    # one line per unusable S3 location (no credentials, wrong endpoint, no bucket, denied) within seconds
    check_s3([store.url, *patterns, cfg.model.source, *([cfg.qa.qa_clip] if cfg.qa.qa_clip else [])], reach)
    sources = resolve_sources(patterns, reach)  # tar shards, manifests, folders of images
    check_output_outside_inputs(patterns, sources, store.url)
    check_manifests(sources, reach, cfg.source, need_instruction=cfg.sampling.instruction is None)
    return sources


def _list_file(listing: Location) -> list[str]:
    try:
        with listing.open("rt", encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except FileNotFoundError:
        raise FileNotFoundError(f"--input @{listing.url}: list file not found") from None
    return [line for line in lines if line and not line.startswith("#")]


def _names_something(pattern: Location) -> bool:
    if any("://" in token for token in pattern.url.split()[1:]):
        return False  # several URLs: no single path looks like that, so no need to ask the store
    try:
        return bool(_resolve(pattern))
    except Exception:  # noqa: BLE001 - any failure means "not one path": it is then read as a list
        return False


def resolve_sources(patterns: Sequence[str], reach: Reach = FROM_ENVIRONMENT) -> list[str]:
    """Source URLs for the patterns: brace ranges, globs, folders, files. Order is kept, duplicates dropped;
    every pattern that matches nothing is named in one FileNotFoundError."""
    return expand_patterns(
        patterns,
        lambda pattern: _resolve(reach.at(pattern)),
        "input(s)",
        f"--input {' '.join(patterns)!r} matches no .tar shard, manifest ({', '.join(MANIFEST_SUFFIXES)}) or "
        "folder of images",
    )


def _resolve(where: Location) -> list[str]:
    pattern, url = where.url, where.absolute.url
    fs, path = where.absolute.fs()
    if not is_local(url):
        fs.invalidate_cache()  # a long-lived process must see inputs added since its last listing
    if any(c in path for c in "*?["):
        matched = sorted(fs.glob(path))
        found = [p for p in matched if p.lower().endswith(SHARD_SUFFIXES + MANIFEST_SUFFIXES)]
        if not found and any(p.lower().endswith(IMAGE_SUFFIXES) for p in matched):
            raise ValueError(
                f"--input {pattern} matches image files: give their folder instead "
                f"(every image under it is read, with sibling .txt/.json instructions)"
            )
        return [with_scheme(url, p) for p in found]
    if fs.isdir(path):
        return _folder(url, fs, path)
    if not fs.exists(path):
        raise FileNotFoundError(pattern)
    if not path.lower().endswith(SHARD_SUFFIXES + MANIFEST_SUFFIXES):  # e.g. a photo: read as a broken tar
        raise ValueError(
            f"--input {pattern}: not a .tar shard nor a manifest ({', '.join(MANIFEST_SUFFIXES)}); "
            f"for images, give their folder (sibling .txt/.json files hold the instructions)"
        )
    return [with_scheme(url, path)]


def _folder(url: str, fs, path: str) -> list[str]:
    """A folder's sources: its tar shards, else its manifests, else the folder itself as images."""
    files = sorted(fs.find(path))
    for suffixes in (SHARD_SUFFIXES, MANIFEST_SUFFIXES):
        found = [p for p in files if p.lower().endswith(suffixes)]
        if found:
            return [with_scheme(url, p) for p in found]
    if any(p.lower().endswith(IMAGE_SUFFIXES) for p in files):
        return [with_scheme(url, path).rstrip("/") + "/"]
    raise FileNotFoundError(url)
