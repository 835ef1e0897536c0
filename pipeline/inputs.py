"""What `--input` names: patterns (repeated flags, a list file, a legacy space-separated string) and the
sources they resolve to (tar shards, manifests, folders of images; see pipeline.sources).

    patterns = input_patterns(["s3://b/in/shard-{000..009}.tar", "/data/my photos/"], reach)
    sources = resolve_sources(patterns, reach)  # absolute URLs, in the order given; a folder of images ends in '/'
    shards = resolve_sources(patterns, reach, SHARDS)     # training: tar shards only (PHOTO_FILES: photo files)
    sources = checked_sources(cfg, store)   # the same, with every check a run makes before writing anything

A folder is read as the first kind it holds, in this order: tar shards, manifests, images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from pipeline import terminal
from pipeline.location import FROM_ENVIRONMENT, Location, Reach, is_local
from pipeline.preflight import check_s3
from pipeline.sources import IMAGE_SUFFIXES, MANIFEST_SUFFIXES, check_manifests
from pipeline.storage import check_output_outside_inputs, expand_braces, with_scheme

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
        return bool(_resolve(pattern, EDIT_SOURCES))
    except Exception:  # noqa: BLE001 - any failure means "not one path": it is then read as a list
        return False


@dataclass(frozen=True)
class SourceKinds:
    """What an input pattern may resolve to. A file or a glob's match must end in one of the suffixes of
    `groups`; a folder is read as the first group it holds (tars before manifests); with `image_folders`, a
    folder holding only images is itself one source (read row by row, pipeline.sources)."""

    groups: tuple[tuple[str, ...], ...]
    noun: str  # a file of another kind "is not <noun>"
    matches_no: str  # a pattern list that finds nothing "matches no <matches_no>"
    missing: str = "input(s)"  # patterns that match nothing: "<n> <missing> not found"
    image_folders: bool = False

    @property
    def suffixes(self) -> tuple[str, ...]:
        return tuple(s for group in self.groups for s in group)


# the edit plan's sources: tar shards, manifests, folders of images
_MANIFESTS = f"manifest ({', '.join(MANIFEST_SUFFIXES)})"
EDIT_SOURCES = SourceKinds(
    (SHARD_SUFFIXES, MANIFEST_SUFFIXES),
    f"a .tar shard nor a {_MANIFESTS}",
    f".tar shard, {_MANIFESTS} or folder of images",
    image_folders=True,
)
SHARDS = SourceKinds((SHARD_SUFFIXES,), "a .tar shard", ".tar shard", "shard(s)")  # training triplets
_PHOTOS = f"photo ({', '.join(IMAGE_SUFFIXES)})"
PHOTO_FILES = SourceKinds((IMAGE_SUFFIXES,), f"a {_PHOTOS}", _PHOTOS)  # the photos procedural data is made from


def resolve_sources(
    patterns: Sequence[str], reach: Reach = FROM_ENVIRONMENT, kinds: SourceKinds = EDIT_SOURCES
) -> list[str]:
    """The one resolver of input patterns: source URLs for brace ranges, globs, folders and files, each
    absolute (so a ledger's `source_shard` opens from any later job). Order is kept, duplicates dropped;
    every pattern that matches nothing is named in one FileNotFoundError (a typo in a range shows at once)."""
    out: list[str] = []
    missing: list[str] = []
    for part in patterns:
        for pattern in expand_braces(part):
            try:
                out += _resolve(reach.at(pattern), kinds)
            except FileNotFoundError:
                missing.append(pattern)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FileNotFoundError(f"--input: {len(missing)} {kinds.missing} not found: {shown}")
    seen: set[str] = set()
    unique = [u for u in out if not (u in seen or seen.add(u))]
    if not unique:
        raise FileNotFoundError(f"--input {' '.join(patterns)!r} matches no {kinds.matches_no}")
    return unique


def _resolve(where: Location, kinds: SourceKinds) -> list[str]:
    pattern, url = where.url, where.absolute.url
    fs, path = where.absolute.fs()
    if not is_local(url):
        fs.invalidate_cache()  # a long-lived process must see inputs added since its last listing
    if any(c in path for c in "*?["):
        matched = sorted(fs.glob(path))
        found = [p for p in matched if p.lower().endswith(kinds.suffixes)]
        if kinds.image_folders and not found and any(p.lower().endswith(IMAGE_SUFFIXES) for p in matched):
            raise ValueError(
                f"--input {pattern} matches image files: give their folder instead "
                f"(every image under it is read, with sibling .txt/.json instructions)"
            )
        return [with_scheme(url, p) for p in found]
    if fs.isdir(path):
        return _folder(url, fs, path, kinds)
    if not fs.exists(path):
        raise FileNotFoundError(pattern)
    if not path.lower().endswith(kinds.suffixes):  # e.g. a photo: it would be read as a broken tar
        hint = (
            "for images, give their folder (sibling .txt/.json files hold the instructions)"
            if kinds.image_folders
            else "give a file, a folder of them, or a pattern such as 'shard-{000..099}.tar'"
        )
        raise ValueError(f"--input {pattern}: not {kinds.noun}; {hint}")
    return [with_scheme(url, path)]


def _folder(url: str, fs, path: str, kinds: SourceKinds) -> list[str]:
    """A folder's sources: its files of the first group it holds (every one under it), else, where images
    are a source, the folder itself."""
    files = sorted(fs.find(path))
    for suffixes in kinds.groups:
        found = [p for p in files if p.lower().endswith(suffixes)]
        if found:
            return [with_scheme(url, p) for p in found]
    if not kinds.image_folders:
        return []  # a folder without files of these kinds adds nothing; no match at all is said once, above
    if any(p.lower().endswith(IMAGE_SUFFIXES) for p in files):
        return [with_scheme(url, path).rstrip("/") + "/"]
    raise FileNotFoundError(url)
