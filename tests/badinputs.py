"""Builders for the bad inputs real-world shards contain, each with the outcome the edit job must give.

    suite = build_suite()            # shards (name -> tar bytes) + one expected outcome per ledger row
    for name, data in suite.shards.items(): upload(name, data)
    ... run the edit job ...
    for row in suite.rows: row.expect.check(ledger_row, output_sample)

Every builder is deterministic (fixed seeds, fixed tar metadata), so a failing row can be rebuilt byte for byte.
Images are tiny: the tiny model works at 32 px and the point is the bytes around the pixels, not the pixels.

What the job must do with each kind is written next to the builder (`Expect`): either the row is edited
(`ok`, plus what must hold for it) or it becomes an error row whose `error_stage` and message say what was
wrong. Either way the job goes on and the ledger balances. docs/reliability.md tabulates the same outcomes.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------------------------- images

# A picture whose orientation can be read back after any resize: red top band, blue bottom-right corner.
# Upright means: mean of the top quarter is red, and the right half of the bottom is bluer than the left.


def marker_array(w: int, h: int) -> np.ndarray:
    """An RGB picture (h, w, 3) with a red top quarter and a blue bottom-right quarter on grey."""
    a = np.full((h, w, 3), 128, np.uint8)  # (H, W, 3)
    a[: max(1, h // 4)] = (220, 20, 20)
    a[h - max(1, h // 4) :, w // 2 :] = (20, 20, 220)
    return a


def is_upright(img: Image.Image) -> bool:
    """True when `img` shows marker_array the right way up (after any resize or centre crop)."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    h, w = a.shape[:2]
    top = a[: max(1, h // 8)].reshape(-1, 3).mean(0)
    bottom_right = a[h - max(1, h // 8) :, w - max(1, w // 4) :].reshape(-1, 3).mean(0)
    bottom_left = a[h - max(1, h // 8) :, : max(1, w // 4)].reshape(-1, 3).mean(0)
    return top[0] > top[2] + 60 and bottom_right[2] > bottom_left[2] + 40


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def good_jpeg(w: int = 48, h: int = 40, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    a = marker_array(w, h).astype(np.int16) + rng.integers(-10, 10, (h, w, 3))
    return encode(Image.fromarray(a.clip(0, 255).astype(np.uint8)), "JPEG", quality=90)


def corrupt_jpeg() -> bytes:
    """Valid markers, garbage Huffman table: libjpeg refuses the stream when decoding starts."""
    data = bytearray(good_jpeg(seed=1))
    dht = data.find(b"\xff\xc4")
    assert dht > 0, "the encoder wrote no Huffman table"
    data[dht + 5 : dht + 25] = b"\xff" * 20
    return bytes(data)


def truncated_jpeg() -> bytes:
    """The first 60% of a JPEG: the header is fine, the scan stops short."""
    data = good_jpeg(seed=2)
    return data[: len(data) * 6 // 10]


def non_image_bytes() -> bytes:
    return b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n"


class PickledCode:
    """What a malicious pickle holds: unpickling it runs code, here touching `marker`, so a test can tell a
    loader that refused it (no marker) from one that ran it. Put one in a state dict and torch.save it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def decompression_bomb_png(side: int = 30000) -> bytes:
    """A PNG whose header declares side x side RGB pixels (2.7 GB decoded at 30000) in a few hundred bytes.

    Only the first rows are present: a reader that trusted the header would allocate the whole canvas before
    finding out; the header alone must be enough to refuse it.
    """
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    rows = zlib.compress(b"\x00" * (1 + 3 * side), 9)  # one filtered row of zeros
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def cmyk_jpeg() -> bytes:
    rgb = Image.fromarray(marker_array(48, 40))
    return encode(rgb.convert("CMYK"), "JPEG", quality=90)


def png16() -> bytes:
    """16-bit greyscale PNG with a horizontal ramp over the full 0..65535 range.

    A naive `convert("RGB")` clips 16-bit values to 255 and turns nearly the whole picture white; a correct
    decode keeps the ramp (left dark, right bright).
    """
    ramp = np.tile(np.linspace(0, 65535, 48, dtype=np.float64), (40, 1)).astype(np.uint16)  # (40, 48)
    return encode(Image.fromarray(ramp), "PNG")  # uint16 -> mode I;16


def rgba_png() -> bytes:
    a = np.dstack([marker_array(48, 40), np.full((40, 48), 128, np.uint8)])  # (40, 48, 4) half transparent
    return encode(Image.fromarray(a, mode="RGBA"), "PNG")


def palette_png() -> bytes:
    """Palette PNG: left half index 0 (black in the palette, but transparent), right half index 1 (grey)."""
    idx = np.zeros((40, 48), np.uint8)  # (40, 48)
    idx[:, 24:] = 1
    img = Image.fromarray(idx, mode="P")
    img.putpalette([0, 0, 0, 128, 128, 128] + [0, 0, 0] * 254)
    return encode(img, "PNG", transparency=0)


def exif_rotated_jpeg() -> bytes:
    """Pixels stored rotated, EXIF Orientation=6 ("rotate 90 CW to view"): viewers show marker_array upright.

    The stored frame is 40 wide x 48 high; upright it is 48 x 40 with the red band on top.
    """
    upright = Image.fromarray(marker_array(48, 40))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote; Orientation 6 undoes it
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def greyscale_jpeg() -> bytes:
    return encode(Image.fromarray(marker_array(48, 40)).convert("L"), "JPEG", quality=90)


def one_pixel_png() -> bytes:
    return encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG")


def extreme_aspect_png(w: int = 4000, h: int = 20) -> bytes:
    return encode(Image.fromarray(marker_array(w, h)), "PNG")


def webp_image() -> bytes:
    return encode(Image.fromarray(marker_array(48, 40)), "WEBP", quality=90)


def png_named_jpg() -> bytes:
    """PNG bytes under a .jpg name: the content decides, not the extension."""
    return encode(Image.fromarray(marker_array(48, 40)), "PNG")


# -------------------------------------------------------------------------------------------- expected


@dataclass(frozen=True)
class Expect:
    """What the ledger row (and, for ok rows, the output sample) of one input row must show."""

    status: str  # "ok" | "error"
    stage: str | None = None  # error_stage of an error row
    fragments: tuple[str, ...] = ()  # the error message contains one of these (case-insensitive)
    holds: str = ""  # what must hold, in words (docs/reliability.md)
    # ok rows: (ledger row dict, output sample {ext: bytes} or None) -> None; raises AssertionError
    check: Callable[[dict, dict | None], None] | None = None
    # ok rows: the decoded working image (H, W, 3) uint8 the model is given -> None; raises AssertionError.
    # (The tiny model's output pixels say nothing about its input, so content is checked where it is made.)
    decoded: Callable[[np.ndarray], None] | None = None

    def verify(self, row: dict, sample: dict | None) -> None:
        where = f"{row.get('source_shard', '?').rsplit('/', 1)[-1]}:{row.get('key')}"
        assert row["status"] == self.status, (
            f"{where}: status {row['status']!r}, expected {self.status!r} "
            f"(error_stage={row.get('error_stage')!r}, error={row.get('error')!r})"
        )
        if self.status == "error":
            assert row["error_stage"] == self.stage, (
                f"{where}: error_stage {row['error_stage']!r}, expected {self.stage!r} ({row['error']!r})"
            )
            msg = (row["error"] or "").lower()
            assert any(f.lower() in msg for f in self.fragments), (
                f"{where}: error {row['error']!r} mentions none of {self.fragments}"
            )
            assert row["output_shard"] is None, f"{where}: an error row points at output {row['output_shard']!r}"
        else:
            assert row["error"] is None and row["error_stage"] is None, (
                f"{where}: ok row carries error {row['error']!r}"
            )
            assert row["output_shard"], f"{where}: ok row has no output shard"
            assert sample is not None and "png" in sample, f"{where}: ok row has no edited image in its output shard"
            if self.check is not None:
                self.check(row, sample)


def _ok(holds: str = "edited; output is an RGB PNG", check=None, decoded=None) -> Expect:
    return Expect("ok", holds=holds, check=check, decoded=decoded)


def _err(stage: str, *fragments: str, holds: str = "") -> Expect:
    return Expect("error", stage, tuple(fragments), holds=holds or f"error row at {stage}: {' / '.join(fragments)}")


def output_image(sample: dict) -> Image.Image:
    img = Image.open(io.BytesIO(sample["png"]))
    img.load()
    return img


def output_meta(sample: dict) -> dict:
    return json.loads(sample["json"])


def _check_rgb_png(row: dict, sample: dict) -> None:
    img = output_image(sample)
    assert img.mode == "RGB", f"{row['key']}: output mode {img.mode}"


def _check_long_instruction(row: dict, sample: dict) -> None:
    _check_rgb_png(row, sample)
    meta = output_meta(sample)
    assert meta.get("instruction_truncated") is True, f"{row['key']}: no truncation note in {sorted(meta)}"


def _check_seed(seed: int) -> Callable[[dict, dict], None]:
    def check(row: dict, sample: dict) -> None:
        _check_rgb_png(row, sample)
        assert row["seed"] == seed, f"{row['key']}: seed {row['seed']} but the sidecar asked for {seed}"

    return check


# what the decoded working image (H, W, 3) must show, per kind


def _decoded_upright(a: np.ndarray) -> None:
    assert is_upright(Image.fromarray(a)), "the picture is not upright (red band on top, blue bottom right)"


def _decoded_ramp(a: np.ndarray) -> None:
    cols = a.astype(np.float32).mean(axis=(0, 2))  # (W,)
    assert cols[: len(cols) // 8].mean() < 60 and cols[-len(cols) // 8 :].mean() > 190, (
        f"16-bit ramp lost: left {cols[:4].mean():.0f}, right {cols[-4:].mean():.0f} (clipped to white?)"
    )


def _decoded_over_white(a: np.ndarray) -> None:
    grey = a[a.shape[0] // 2, a.shape[1] // 2].astype(int)  # grey 128 at alpha 0.5 -> ~191 over white
    assert all(175 <= v <= 207 for v in grey), (
        f"half-transparent grey became {grey.tolist()}, expected ~191 (white under)"
    )


def _decoded_transparent_white(a: np.ndarray) -> None:
    left, right = a[:, : a.shape[1] // 4].mean(), a[:, -a.shape[1] // 4 :].mean()
    assert left > 245 and 118 <= right <= 138, f"transparent half {left:.0f} (want white), opaque half {right:.0f}"


def _decoded_grey(a: np.ndarray) -> None:
    assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2]), "grey input came out coloured"


def _decoded_one_pixel(a: np.ndarray) -> None:
    assert np.abs(a.astype(int) - [10, 200, 30]).max() <= 2, f"1x1 colour lost: {a[0, 0].tolist()}"


# ----------------------------------------------------------------------------------------------- suite


@dataclass(frozen=True)
class ExpectedRow:
    kind: str  # e.g. "corrupt_jpeg"; one kind may give several rows
    shard: str  # input shard file name
    key: str  # __key__ as the ledger records it
    occurrence: int  # 0 for the first row with this key in this shard, 1 for the second ...
    expect: Expect


@dataclass(frozen=True)
class Kind:
    kind: str
    description: str  # the input, in words


@dataclass
class Suite:
    shards: dict[str, bytes] = field(default_factory=dict)  # file name -> tar bytes
    rows: list[ExpectedRow] = field(default_factory=list)
    kinds: list[Kind] = field(default_factory=list)

    def kind_names(self) -> list[str]:
        return [k.kind for k in self.kinds]


INSTRUCTION = b"make it brighter"
LONG_INSTRUCTION = ("make the sky a deeper blue and " * 800).encode()  # ~25k chars, far over any token limit


def _member(name: str, data: bytes) -> tuple[str, bytes]:
    return name, data


def raw_tar(members: list[tuple[str, bytes]]) -> bytes:
    """A tar of (name, bytes) exactly as given (names unchecked: builders need ../ and repeated names)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_suite() -> Suite:
    """Every bad-input kind, spread over a few shards, with one expected outcome per ledger row."""
    s = Suite()
    mixed: list[tuple[str, bytes]] = []

    def row(
        kind: str,
        description: str,
        key: str,
        members: list[tuple[str, bytes]],
        expect: Expect,
        shard: str = "mixed-000.tar",
        occurrence: int = 0,
        into: list | None = None,
    ) -> None:
        (mixed if into is None else into).extend(members)
        if kind not in s.kind_names():
            s.kinds.append(Kind(kind, description))
        s.rows.append(ExpectedRow(kind, shard, key, occurrence, expect))

    txt = lambda key, text=INSTRUCTION: _member(f"{key}.txt", text)  # noqa: E731

    row(
        "control",
        "a plain good JPEG + txt instruction",
        "good-000",
        [_member("good-000.jpg", good_jpeg(seed=10)), txt("good-000")],
        _ok(check=_check_rgb_png),
    )
    row(
        "corrupt_jpeg",
        "JPEG markers intact, Huffman table overwritten with garbage",
        "corrupt-jpeg",
        [_member("corrupt-jpeg.jpg", corrupt_jpeg()), txt("corrupt-jpeg")],
        _err("decode", "broken data stream", "corrupt", "cannot decode", "cannot read"),
    )
    row(
        "truncated_image",
        "first 60% of a JPEG",
        "truncated-jpeg",
        [_member("truncated-jpeg.jpg", truncated_jpeg()), txt("truncated-jpeg")],
        _err("decode", "truncated"),
    )
    row(
        "zero_byte_image",
        "a .jpg member of 0 bytes",
        "zero-byte",
        [_member("zero-byte.jpg", b""), txt("zero-byte")],
        _err("decode", "empty", "0 bytes", "zero"),
    )
    row(
        "non_image_bytes",
        "an HTML error page saved as .jpg",
        "html-as-jpg",
        [_member("html-as-jpg.jpg", non_image_bytes()), txt("html-as-jpg")],
        _err("decode", "cannot identify", "not an image", "unidentified"),
    )
    row(
        "decompression_bomb",
        "PNG header declaring 30000x30000 RGB (2.7 GB decoded) in a few KB",
        "bomb",
        [_member("bomb.png", decompression_bomb_png()), txt("bomb")],
        _err("decode", "pixels", "bomb", "too large"),
    )
    row(
        "cmyk_jpeg",
        "CMYK JPEG",
        "cmyk",
        [_member("cmyk.jpg", cmyk_jpeg()), txt("cmyk")],
        _ok("converted to RGB (colours kept), edited", _check_rgb_png, _decoded_upright),
    )
    row(
        "png_16bit",
        "16-bit greyscale PNG (full-range ramp)",
        "png16",
        [_member("png16.png", png16()), txt("png16")],
        _ok("scaled to 8 bits (ramp kept, not clipped white), edited", _check_rgb_png, _decoded_ramp),
    )
    row(
        "rgba_png",
        "RGBA PNG, half transparent",
        "rgba",
        [_member("rgba.png", rgba_png()), txt("rgba")],
        _ok("alpha composited over white, edited", _check_rgb_png, _decoded_over_white),
    )
    row(
        "palette_png",
        "palette (P) PNG with a transparent index",
        "palette",
        [_member("palette.png", palette_png()), txt("palette")],
        _ok("transparent index becomes white, edited", _check_rgb_png, _decoded_transparent_white),
    )
    row(
        "exif_rotated",
        "JPEG stored rotated with EXIF Orientation=6",
        "exif-rotated",
        [_member("exif-rotated.jpg", exif_rotated_jpeg()), txt("exif-rotated")],
        _ok("EXIF orientation applied before editing (upright)", _check_rgb_png, _decoded_upright),
    )
    row(
        "greyscale",
        "8-bit greyscale (L) JPEG",
        "grey",
        [_member("grey.jpg", greyscale_jpeg()), txt("grey")],
        _ok("converted to RGB (R=G=B), edited", _check_rgb_png, _decoded_grey),
    )
    row(
        "one_pixel",
        "a 1x1 PNG",
        "one-pixel",
        [_member("one-pixel.png", one_pixel_png()), txt("one-pixel")],
        _ok("upscaled to the working size, colour kept, edited", _check_rgb_png, _decoded_one_pixel),
    )
    row(
        "extreme_aspect",
        "a 4000x20 PNG",
        "wide",
        [_member("wide.png", extreme_aspect_png()), txt("wide")],
        _ok("centre crop, edited", _check_rgb_png, _decoded_upright),
    )
    row(
        "webp",
        "a WebP image",
        "webp",
        [_member("webp.webp", webp_image()), txt("webp")],
        _ok(check=_check_rgb_png, decoded=_decoded_upright),
    )
    row(
        "png_named_jpg",
        "PNG bytes under a .jpg name",
        "png-as-jpg",
        [_member("png-as-jpg.jpg", png_named_jpg()), txt("png-as-jpg")],
        _ok("content decides the format", _check_rgb_png, _decoded_upright),
    )
    row(
        "missing_image",
        "an instruction with no image member",
        "no-image",
        [txt("no-image")],
        _err("decode", "no image"),
    )
    row(
        "missing_instruction",
        "an image with no txt and no json",
        "no-instruction",
        [_member("no-instruction.jpg", good_jpeg(seed=11))],
        _err("validate", "missing instruction"),
    )
    row(
        "empty_instruction",
        "txt of 0 bytes",
        "empty-instruction",
        [_member("empty-instruction.jpg", good_jpeg(seed=12)), txt("empty-instruction", b"")],
        _err("validate", "empty instruction"),
    )
    row(
        "whitespace_instruction",
        "txt of spaces, tabs and newlines",
        "blank-instruction",
        [_member("blank-instruction.jpg", good_jpeg(seed=13)), txt("blank-instruction", b"  \t\n \r\n")],
        _err("validate", "empty instruction"),
    )
    row(
        "long_instruction",
        "a 25,000-character instruction",
        "long-instruction",
        [_member("long-instruction.jpg", good_jpeg(seed=14)), txt("long-instruction", LONG_INSTRUCTION)],
        _ok("truncated to the model's token limit, noted in the output JSON", _check_long_instruction),
    )
    row(
        "non_utf8_instruction",
        "txt with bytes that are not UTF-8 (Latin-1 / broken sequences)",
        "latin1",
        [_member("latin1.jpg", good_jpeg(seed=15)), txt("latin1", b"mach es sch\xf6ner \xc3\x28 bitte")],
        _err("validate", "not utf-8"),
    )
    row(
        "bad_json_sidecar",
        "json sidecar that is not JSON, next to a txt instruction",
        "bad-json",
        [_member("bad-json.jpg", good_jpeg(seed=16)), txt("bad-json"), _member("bad-json.json", b"{instruction: 'x',")],
        _err("validate", "bad json"),
    )
    row(
        "json_instruction",
        "instruction and seed in the json sidecar (no txt)",
        "json-instruction",
        [
            _member("json-instruction.jpg", good_jpeg(seed=17)),
            _member("json-instruction.json", json.dumps({"instruction": "add snow", "seed": 4242}).encode()),
        ],
        _ok("instruction and seed taken from the json", _check_seed(4242)),
    )
    row(
        "json_instruction_not_text",
        "json sidecar whose instruction is a number",
        "json-number",
        [_member("json-number.jpg", good_jpeg(seed=18)), _member("json-number.json", b'{"instruction": 42}')],
        _err("validate", "'instruction' must be a string"),
    )
    # duplicates: the ledger identifies a row by (source_shard, row_index). The first row of a key is edited;
    # a later row with the same key in the same shard is an error row (its output member would collide).
    row(
        "duplicate_key_in_shard",
        "the same key twice in one shard, other samples between",
        "dup",
        [_member("dup.jpg", good_jpeg(seed=19)), txt("dup")],
        _ok("the first row is edited", _check_rgb_png),
    )
    row(
        "control",
        "a plain good JPEG + txt instruction",
        "good-001",
        [_member("good-001.jpg", good_jpeg(seed=20)), txt("good-001")],
        _ok(check=_check_rgb_png),
    )
    row(
        "duplicate_key_in_shard",
        "the same key twice in one shard, other samples between",
        "dup",
        [_member("dup.jpg", good_jpeg(seed=21)), txt("dup")],
        _err("read", "duplicate key"),
        occurrence=1,
    )
    # the same sample given twice in a row (key.jpg key.txt key.jpg key.txt): WebDataset's grouping alone would
    # merge the two and keep the second image silently; it must be the same duplicate-key case as above
    row(
        "duplicate_key_adjacent",
        "the same sample twice in a row (a.jpg a.txt a.jpg a.txt)",
        "dup-adjacent",
        [_member("dup-adjacent.jpg", good_jpeg(seed=22)), txt("dup-adjacent")],
        _ok("the first row is edited", _check_rgb_png),
    )
    row(
        "duplicate_key_adjacent",
        "the same sample twice in a row (a.jpg a.txt a.jpg a.txt)",
        "dup-adjacent",
        [_member("dup-adjacent.jpg", good_jpeg(seed=23)), txt("dup-adjacent")],
        _err("read", "duplicate key"),
        occurrence=1,
    )
    # members of one sample split by another sample: a.jpg, b.jpg, b.txt, a.txt. A streaming reader sees
    # three samples: a (image only), b, a again (instruction only); neither part of `a` is guessed together.
    row(
        "non_contiguous_members",
        "members of one sample split by another sample (a.jpg b.jpg b.txt a.txt)",
        "split-b",
        [
            _member("split-a.jpg", good_jpeg(seed=24)),
            _member("split-b.jpg", good_jpeg(seed=25)),
            txt("split-b"),
            txt("split-a"),
        ],
        _ok("the sample in between is unaffected", _check_rgb_png),
    )
    s.rows.append(
        ExpectedRow("non_contiguous_members", "mixed-000.tar", "split-a", 0, _err("validate", "missing instruction"))
    )
    s.rows.append(
        ExpectedRow(
            "non_contiguous_members", "mixed-000.tar", "split-a", 1, _err("read", "duplicate key", "not contiguous")
        )
    )
    row(
        "path_traversal",
        "a member named ../escape.jpg (and its txt)",
        "../escape",
        [_member("../escape.jpg", good_jpeg(seed=26)), txt("../escape")],
        _err("read", "unsafe member name"),
    )
    row(
        "absolute_path",
        "a member named /abs/evil.jpg (and its txt)",
        "/abs/evil",
        [_member("/abs/evil.jpg", good_jpeg(seed=27)), txt("/abs/evil")],
        _err("read", "unsafe member name"),
    )
    row(
        "control",
        "a plain good JPEG + txt instruction",
        "good-002",
        [_member("good-002.jpg", good_jpeg(seed=28)), txt("good-002")],
        _ok(check=_check_rgb_png),
    )
    s.shards["mixed-000.tar"] = raw_tar(mixed)

    # the same key in two shards: two different rows (the ledger keys rows by source shard), both edited
    other: list[tuple[str, bytes]] = []
    row(
        "duplicate_key_across_shards",
        "key good-000 also in a second shard",
        "good-000",
        [_member("good-000.jpg", good_jpeg(seed=30)), txt("good-000")],
        _ok(check=_check_rgb_png),
        shard="other-000.tar",
        into=other,
    )
    row(
        "control",
        "a plain good JPEG + txt instruction",
        "other-001",
        [_member("other-001.jpg", good_jpeg(seed=31)), txt("other-001")],
        _ok(check=_check_rgb_png),
        shard="other-000.tar",
        into=other,
    )
    s.shards["other-000.tar"] = raw_tar(other)

    # a tar cut in the middle of a member: the rows before the break are edited; what follows the break cannot
    # be read as rows, so the ledger gets one error row for the break, keyed by its position
    cut: list[tuple[str, bytes]] = []
    for i in range(2):
        key = f"cut-{i:03d}"
        row(
            "truncated_tar",
            "a tar file cut off in the middle of its third sample",
            key,
            [_member(f"{key}.jpg", good_jpeg(seed=40 + i)), txt(key)],
            _ok("rows before the break edited", _check_rgb_png),
            shard="truncated-000.tar",
            into=cut,
        )
    cut += [_member("cut-002.jpg", good_jpeg(seed=42)), txt("cut-002")]
    whole = raw_tar(cut)
    header = whole.find(b"cut-002.jpg")
    s.shards["truncated-000.tar"] = whole[: header + 512 + 100]  # cut-002.jpg's header + 100 bytes of its data
    s.rows.append(
        ExpectedRow(
            "truncated_tar", "truncated-000.tar", "__unreadable__000002", 0, _err("read", "unreadable after 2 samples")
        )
    )
    return s
