"""Procedural training triplets: photos x known global edits -> (input, instruction, goal, expressive) shards.

Each edit is a deterministic image operation with a strength drawn from a seeded generator, several terse
instruction phrasings (what a user types) and an expressive instruction that names what changes (what
MGIE's MLLM should learn to say). The output has the layout `make-dataset` writes, so `mgie-batch train`
reads both:

    <output>/<ProceduralLayout.shard(i)>   <key>.input.png, <key>.goal.png, <key>.json
    <output>/<ProceduralLayout.MANIFEST>   written last: settings, counts, shard list

`<key>.json` holds instruction, summary and expressive_instruction (the same text), edit, strength, source.
The same photos, seed and settings give byte-identical shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from pipeline.inputs import PHOTO_FILES, SHARDS, SourceKinds, resolve_sources
from pipeline.layout import ProceduralLayout
from pipeline.location import FROM_ENVIRONMENT, Reach
from pipeline.shards import iter_samples, write_samples
from pipeline.sources import IMAGE_SUFFIXES
from pipeline.storage import Store
from pipeline.training.photo_sets import is_photo_set, iter_photo_set
from pipeline.training.phrasings import draw, training_phrasings


@dataclass(frozen=True)
class GlobalEdit:
    name: str
    phrasings: tuple[str, ...]  # what training rows say: synonyms, word order, politeness, strength words
    held_out_phrasings: tuple[str, ...]  # never in a training row: the held-out checks use only these
    expressive: str  # the concise expressive instruction; names the edit
    strength: tuple[float, float]  # range the seeded strength is drawn from
    apply: Callable[[Image.Image, float], Image.Image]
    # never in a training row and none of the held-out ones: the validation split (new crops of the training
    # photos) says these, so that choosing a model or its sampler settings reads new wordings the way the
    # held-out check does, without looking at the held-out phrasings
    validation_phrasings: tuple[str, ...]

    @property
    def unseen_phrasings(self) -> tuple[str, ...]:
        """The phrasings no training row may hold: held-out and validation."""
        return self.held_out_phrasings + self.validation_phrasings

    def said(self, phrasings: str) -> tuple[str, ...]:
        """The phrasings of a set as they are: train, held-out or validation (composed ones are drawn)."""
        sets = {"train": self.phrasings, "held-out": self.held_out_phrasings, "validation": self.validation_phrasings}
        if phrasings not in sets:
            raise ValueError(f"phrasings {phrasings!r}: the sets said as they are are {', '.join(sets)}")
        return sets[phrasings]


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32)


def _img(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "RGB")


def _tint(img: Image.Image, s: float, sign: float) -> Image.Image:
    # warmer: red up, blue down; cooler: the reverse (s in [0, 1] of a 255 shift budget)
    a = _arr(img)
    a[..., 0] += sign * 40 * s
    a[..., 2] -= sign * 40 * s
    return _img(a)


def _sepia(img: Image.Image, s: float) -> Image.Image:
    m = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], dtype=np.float32)
    a = _arr(img)
    return _img((1 - s) * a + s * (a @ m.T))


def _vignette(img: Image.Image, s: float) -> Image.Image:
    a = _arr(img)
    h, w = a.shape[:2]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((x - (w - 1) / 2) / (w / 2)) ** 2 + ((y - (h - 1) / 2) / (h / 2)) ** 2) / np.sqrt(2)
    return _img(a * (1 - s * r**2)[..., None])


EDITS: tuple[GlobalEdit, ...] = (
    GlobalEdit(
        "brighten",
        (
            "make it brighter",
            "brighten the photo",
            "increase the brightness",
            "more light",
            "please make the picture brighter",
            "brighten it up a bit",
            "make it much brighter",
            "the photo is too dark, fix it",
            "lighten the image",
            "can you make this lighter",
        ),
        ("make the photo lighter", "turn up the brightness", "it needs to be brighter please"),
        "The photo becomes brighter, with lighter shadows and highlights.",
        (1.3, 1.7),
        lambda im, s: ImageEnhance.Brightness(im).enhance(s),
        validation_phrasings=(
            "give the photo more light please",
            "lift the exposure of the picture",
            "it should be a lot brighter",
        ),
    ),
    GlobalEdit(
        "darken",
        (
            "make it darker",
            "darken the photo",
            "lower the brightness",
            "less light",
            "please make the picture darker",
            "darken it a bit",
            "make it much darker",
            "the photo is too bright, tone it down",
            "make the image dimmer",
            "can you make this darker",
        ),
        ("turn down the brightness", "make the photo dimmer please", "reduce the light in the picture"),
        "The photo becomes darker, as if taken in dim light.",
        (0.45, 0.75),
        lambda im, s: ImageEnhance.Brightness(im).enhance(s),
        validation_phrasings=(
            "take the brightness down please",
            "the image should be darker",
            "make the picture a little dimmer",
        ),
    ),
    GlobalEdit(
        "contrast",
        (
            "add more contrast",
            "increase the contrast",
            "make it punchier",
            "boost the contrast",
            "please add some contrast",
            "a bit more contrast",
            "much more contrast",
            "the photo looks flat, add contrast",
            "give it stronger contrast",
        ),
        ("raise the contrast", "make the contrast higher please", "more contrast in the picture"),
        "The contrast is stronger: darks get darker and lights get lighter.",
        (1.4, 2.0),
        lambda im, s: ImageEnhance.Contrast(im).enhance(s),
        validation_phrasings=(
            "give the picture more punch",
            "deepen the contrast please",
            "make the darks and lights stand apart",
        ),
    ),
    GlobalEdit(
        "saturate",
        (
            "make the colors more vivid",
            "increase the saturation",
            "more colorful",
            "boost the colors",
            "please saturate the photo",
            "make the colors pop",
            "a bit more saturation",
            "much more vivid colors",
            "the colors look dull, make them richer",
        ),
        ("make the colours more intense", "turn up the saturation", "give it richer colors please"),
        "The colors become more saturated and vivid.",
        (1.6, 2.4),
        lambda im, s: ImageEnhance.Color(im).enhance(s),
        validation_phrasings=(
            "make the colours richer please",
            "give the image more vivid colours",
            "pump up the saturation",
        ),
    ),
    GlobalEdit(
        "grayscale",
        (
            "make it black and white",
            "remove the color",
            "turn it into a grayscale photo",
            "desaturate it completely",
            "please make the photo monochrome",
            "convert to black and white",
            "no color at all",
            "make the picture gray",
        ),
        ("turn it black and white please", "drain all the colour", "make it a monochrome picture"),
        "The photo is black and white, with no color left.",
        (1.0, 1.0),
        lambda im, s: im.convert("L").convert("RGB"),
        validation_phrasings=(
            "take all the colour out",
            "show it in shades of gray",
            "strip the picture of its colors",
        ),
    ),
    GlobalEdit(
        "sepia",
        (
            "give it a sepia tone",
            "make it look like an old photo",
            "apply a sepia filter",
            "add a sepia effect",
            "please make it sepia",
            "give the picture a vintage brown tone",
            "make it look antique",
            "turn it into an old brown print",
        ),
        (
            "make it look like a sepia photograph",
            "age the photo with a brown tint",
            "give it an old-fashioned sepia look",
        ),
        "The photo has a warm brown sepia tone like an old print.",
        (0.8, 1.0),
        _sepia,
        validation_phrasings=(
            "tint it sepia please",
            "make it brown like an old print",
            "give the image an aged sepia tint",
        ),
    ),
    GlobalEdit(
        "warmer",
        (
            "make it warmer",
            "warm up the colors",
            "add a warm tone",
            "please make the photo warmer",
            "make the colors a bit warmer",
            "much warmer colors",
            "give it an orange glow",
            "the photo looks cold, warm it up",
            "shift the colors toward red",
        ),
        ("add warmth to the picture", "give it warmer tones please", "make the light feel warmer"),
        "The colors are warmer, shifted toward orange and red.",
        (0.5, 1.0),
        lambda im, s: _tint(im, s, 1.0),
        validation_phrasings=(
            "give the photo a warmer feel",
            "make the colours warmer please",
            "bring some warmth into the image",
        ),
    ),
    GlobalEdit(
        "cooler",
        (
            "make it cooler",
            "cool down the colors",
            "add a cold blue tone",
            "please make the photo cooler",
            "make the colors a bit cooler",
            "much cooler colors",
            "give it a blue tint",
            "the photo looks too warm, cool it down",
            "shift the colors toward blue",
        ),
        ("add a chilly feel to the picture", "give it cooler tones please", "make the light feel colder"),
        "The colors are cooler, shifted toward blue.",
        (0.5, 1.0),
        lambda im, s: _tint(im, s, -1.0),
        validation_phrasings=(
            "give the photo a cooler feel",
            "make the colours cooler please",
            "bring a blue chill into the image",
        ),
    ),
    GlobalEdit(
        "invert",
        (
            "invert the colors",
            "make it a negative",
            "turn it into a photo negative",
            "please invert the picture",
            "reverse all the colors",
            "make it look like a film negative",
            "flip the colors to their opposites",
            "invert the image",
        ),
        ("turn the colours inside out like a negative", "show it as a negative please", "make a negative of the photo"),
        "Every color is inverted, like a film negative.",
        (1.0, 1.0),
        lambda im, s: _img(255.0 - _arr(im)),
        validation_phrasings=(
            "swap every colour for its opposite",
            "make the picture look negative",
            "turn the image into its negative please",
        ),
    ),
    GlobalEdit(
        "blur",
        (
            "blur the photo",
            "make it blurry",
            "soften the image",
            "please blur the picture",
            "make it a bit blurry",
            "much more blur",
            "make it out of focus",
            "add a soft blur",
        ),
        ("defocus the picture", "make the photo fuzzy please", "give it a blurred look"),
        "The whole photo is blurred and out of focus.",
        (1.5, 3.0),
        lambda im, s: im.filter(ImageFilter.GaussianBlur(s * im.width / 256)),
        validation_phrasings=(
            "make the image soft and blurry",
            "blur the picture a little please",
            "take it out of focus",
        ),
    ),
    GlobalEdit(
        "sharpen",
        (
            "sharpen the photo",
            "make it crisper",
            "increase the sharpness",
            "please sharpen the picture",
            "make it a bit sharper",
            "much sharper details",
            "make the edges crisp",
            "the photo looks soft, sharpen it",
        ),
        ("bring out the fine detail", "make the picture sharper please", "crisp up the image"),
        "Edges and fine details are sharper and crisper.",
        (2.0, 3.0),
        lambda im, s: ImageEnhance.Sharpness(im).enhance(s),
        validation_phrasings=(
            "sharpen up the details please",
            "give the photo crisp edges",
            "make the whole image crisper",
        ),
    ),
    GlobalEdit(
        "vignette",
        (
            "add a vignette",
            "darken the corners",
            "give it a vignette effect",
            "please add a vignette",
            "add a subtle vignette",
            "a strong vignette",
            "make the edges darker",
            "darken the edges around the center",
        ),
        ("shade the borders of the photo", "give the picture dark corners please", "fade the edges to dark"),
        "The corners and edges are darkened in a vignette around the center.",
        (0.6, 0.9),
        _vignette,
        validation_phrasings=(
            "darken the corners of the photo please",
            "add a dark vignette",
            "shade the corners of the image",
        ),
    ),
)
EDITS_BY_NAME = {e.name: e for e in EDITS}


@dataclass(frozen=True)
class ProceduralSettings:
    resolution: int = 256  # the reference trains diffusion at 256 px
    seed: int = 13331
    edits_per_image: int = 4  # 0 = every edit
    rows_per_shard: int = 64
    edits: tuple[str, ...] = tuple(EDITS_BY_NAME)
    limit: int | None = None  # photos to use at most
    # train: GlobalEdit.phrasings as they are | composed: those composed with frames and attribute words
    # (pipeline/training/phrasings.py) | held-out, validation: GlobalEdit.held_out_phrasings or
    # .validation_phrasings as they are
    phrasings: str = "train"

    def __post_init__(self):
        if self.phrasings not in PHRASING_SETS:
            raise ValueError(f"phrasings {self.phrasings!r}: known sets are {', '.join(PHRASING_SETS)}")


PHRASING_SETS = ("train", "composed", "held-out", "validation")


def tokenizer_corpus(phrasings: str) -> list[str]:
    """What the training rows of a phrasing set say, instructions and expressive texts, each once: the texts a
    tokenizer for them is fitted on (bench.train_tiny --tokenizer words). Never a held-out or validation phrasing."""
    if phrasings not in ("train", "composed"):
        raise ValueError(f"phrasings {phrasings!r}: a tokenizer is fitted on training sets only (train, composed)")
    texts = []
    for edit in EDITS:
        said = training_phrasings(edit.name, edit.phrasings, edit.unseen_phrasings)
        texts += [*(edit.phrasings if phrasings == "train" else said), edit.expressive]
    return texts


def _square(img: Image.Image, resolution: int) -> Image.Image:
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.Resampling.BICUBIC)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")  # PIL writes PNGs without timestamps: equal pixels, equal bytes
    return buf.getvalue()


def _safe_key(name: str) -> str:
    """A WebDataset key from a file name: no dots (the extension starts at the first one), no slashes."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name) or "photo"


def iter_photos(spec: str | Sequence[str], reach: Reach = FROM_ENVIRONMENT) -> Iterator[tuple[str, bytes]]:
    """(name, encoded image) from folders / globs of photo files or from WebDataset shards (first image field);
    `spec` is one pattern or several (repeated --input)."""
    patterns = [spec] if isinstance(spec, str) else list(spec)
    if any(is_photo_set(p) for p in patterns):  # builtin:<set>: photos that ship with scikit-image
        for p in patterns:
            yield from (iter_photo_set(p) if is_photo_set(p) else iter_photos(p, reach))
        return
    tars = [u for p in patterns for u in _resolve(p, reach, SHARDS)]
    files = [u for p in patterns for u in _resolve(p, reach, PHOTO_FILES)]
    if not tars and not files:
        raise FileNotFoundError(f"--input {spec!r}: no photos ({', '.join(IMAGE_SUFFIXES)}) and no .tar shards")
    for url in sorted(files):
        with reach.at(url).open() as f:
            yield url.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0], f.read()
    for url in tars:
        with reach.at(url).open() as f:
            for key, fields in iter_samples(f):
                ext = next((e for e in ("jpg", "jpeg", "png", "webp") if e in fields), None)
                if ext is not None:
                    yield key.rsplit("/", 1)[-1], fields[ext]


def _resolve(spec: str, reach: Reach, kinds: SourceKinds) -> list[str]:
    try:
        return resolve_sources(spec.split(), reach, kinds)
    except (FileNotFoundError, ValueError):  # nothing of this kind there (a single file of another kind)
        return []


def _row_rng(seed: int, name: str) -> random.Random:
    # per-photo generator: a photo's rows do not depend on which other photos are in the input
    return random.Random(int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big"))


def triplets(photos: Iterator[tuple[str, bytes]], s: ProceduralSettings) -> Iterator[tuple[str, dict[str, bytes]]]:
    """WebDataset samples, one per (photo, chosen edit), in a deterministic order."""
    unknown = sorted(set(s.edits) - set(EDITS_BY_NAME))
    if unknown:
        raise ValueError(f"unknown edits {unknown}; known: {sorted(EDITS_BY_NAME)}")
    seen: set[str] = set()
    for count, (name, data) in enumerate(photos):
        if s.limit is not None and count >= s.limit:
            return
        base = _safe_key(name)
        while base in seen:
            base += "_"
        seen.add(base)
        source = _square(Image.open(io.BytesIO(data)).convert("RGB"), s.resolution)
        rng = _row_rng(s.seed, base)
        chosen = (
            list(s.edits) if s.edits_per_image <= 0 else rng.sample(list(s.edits), min(s.edits_per_image, len(s.edits)))
        )
        source_png = _png(source)
        for edit_name in chosen:
            edit = EDITS_BY_NAME[edit_name]
            strength = round(rng.uniform(*edit.strength), 4)
            if s.phrasings == "composed":
                instruction = draw(edit.name, edit.phrasings, edit.unseen_phrasings, rng)
            else:
                instruction = rng.choice(edit.said(s.phrasings))
            record = {
                "instruction": instruction,
                "summary": edit.expressive,
                "expressive_instruction": edit.expressive,
                "edit": edit.name,
                "strength": strength,
                "source": name,
            }
            yield (
                f"{base}-{edit.name}",
                {
                    "input.png": source_png,
                    "goal.png": _png(edit.apply(source, strength)),
                    "json": json.dumps(record, sort_keys=True).encode(),
                },
            )


def make_procedural_dataset(
    spec: str | Sequence[str], output: str, s: ProceduralSettings, reach: Reach = FROM_ENVIRONMENT
) -> dict:
    """Writes the shards, then the manifest. Rerunning rewrites identical bytes (safe after a crash)."""
    store = Store.open(reach.at(output))
    shards, rows, batch = [], 0, []

    def flush():
        name = ProceduralLayout.shard(len(shards))
        store.write_atomic(name, write_samples(batch))
        shards.append(name)
        batch.clear()

    for sample in triplets(iter_photos(spec, reach), s):
        batch.append(sample)
        rows += 1
        if len(batch) >= s.rows_per_shard:
            flush()
    if batch:
        flush()
    if not rows:
        raise ValueError(f"--input {spec!r} gave no photos")
    manifest = {"kind": "procedural", "input": spec, "settings": asdict(s), "rows": rows, "shards": shards}
    store.write_atomic(ProceduralLayout.MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return manifest
