"""A before/after contact sheet of an edit run: one PNG, one line per row (input, output, instruction, expressive
instruction), for looking at a run without a browser and for the README. Reads the output's own shards, so it
needs the run to have kept its inputs (`--copy-input`: `<key>.input.<ext>` beside each edit)."""

from __future__ import annotations

import io
import textwrap
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from pipeline.writers.webdataset import iter_shard_rows


def sheet_rows(
    output: str, limit: int, storage_options: dict | None = None, keys: list[str] | None = None
) -> list[dict[str, Any]]:
    """Up to `limit` ok rows of a webdataset-format output that kept their inputs, in key order (or in the
    order of `keys`, those rows only)."""
    rows = [
        {
            "key": r.key,
            "input": r.images["input"],
            "edited": r.images["image"],
            "instruction": r.meta.get("instruction", ""),
            "expressive": r.meta.get("expressive_instruction") or "",
        }
        for r in iter_shard_rows(output, storage_options)
        if {"image", "input"} <= r.images.keys() and r.meta
    ]
    if keys is not None:
        by_key = {r["key"]: r for r in rows}
        return [by_key[k] for k in keys if k in by_key][:limit]
    rows.sort(key=lambda r: r["key"])
    return rows[:limit]


def _thumb(data: bytes, side: int) -> Image.Image:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    return img


def render_sheet(rows: list[dict[str, Any]], side: int = 192, text_width: int = 420, title: str = "") -> Image.Image:
    """rows -> one RGB picture: a header, then input | output | texts per row."""
    font = ImageFont.load_default(size=15)
    small = ImageFont.load_default(size=13)
    pad, header = 10, 34 if title else 0
    width = pad + side + pad + side + pad + text_width + pad
    sheet = Image.new("RGB", (width, header + pad + len(rows) * (side + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, pad), title, fill="black", font=font)
    for i, row in enumerate(rows):
        top = header + pad + i * (side + pad)
        for j, name in enumerate(("input", "edited")):
            img = _thumb(row[name], side)
            left = pad + j * (side + pad)
            sheet.paste(img, (left + (side - img.width) // 2, top + (side - img.height) // 2))
        x = pad + 2 * (side + pad)
        draw.text((x, top), f"\u201c{row['instruction']}\u201d", fill="black", font=font)
        wrapped = textwrap.fill(row["expressive"] or "(no expressive instruction)", width=text_width // 8)
        draw.multiline_text((x, top + 26), wrapped, fill=(70, 70, 70), font=small, spacing=4)
    return sheet


def write_contact_sheet(
    output: str,
    path: str,
    limit: int = 12,
    title: str = "",
    storage_options: dict | None = None,
    keys: list[str] | None = None,
) -> int:
    """Writes the sheet PNG to the local `path`. -> rows drawn (0: nothing written, no row kept its input)."""
    rows = sheet_rows(output, limit, storage_options, keys)
    if rows:
        sheet = render_sheet(rows, title=title)  # the format follows the file name: .png, or .jpg for a small file
        sheet.save(path, optimize=True, **({"quality": 82} if path.lower().endswith((".jpg", ".jpeg")) else {}))
    return len(rows)
