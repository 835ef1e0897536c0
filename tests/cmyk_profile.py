"""A small but real CMYK printer profile, built in code: no CMYK ICC profile ships with any package here, and
LittleCMS (PIL.ImageCms) can make only sRGB, Lab and XYZ profiles itself.

The "press" is a four-ink model in linear sRGB: each ink at coverage c multiplies the paper's reflectance by
1 - c * (1 - its transmittance), paper white being 1 (relative colorimetric: the page is the white point).
Its transmittances are those of process inks, roughly, so pure cyan prints (63, 178, 237) in sRGB where
PIL's plain `convert("RGB")` says (0, 255, 255): a test can tell colour management from the naive path.

    icc = press_icc()             ICC v2.1 output profile ('prtr', CMYK, Lab PCS): A2B0 and B2A0 as lut16
    press_srgb(cmyk)              what the profile says a CMYK value looks like, as 8-bit sRGB (expected values)
"""

from __future__ import annotations

import functools
import struct

import numpy as np

# linear-sRGB transmittance of each ink at full coverage, (4, 3): cyan, magenta, yellow, black
INKS = np.array([[0.05, 0.45, 0.85], [0.80, 0.10, 0.40], [0.95, 0.85, 0.08], [0.04, 0.04, 0.04]])
D50 = np.array([0.9642, 1.0, 0.8249])
SRGB_TO_XYZ_D65 = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
BRADFORD_D65_TO_D50 = np.array([[1.0478, 0.0229, -0.0502], [0.0295, 0.9905, -0.0171], [-0.0092, 0.0150, 0.7521]])


def press_linear(cmyk: np.ndarray) -> np.ndarray:
    """(..., 4) coverages in [0, 1] -> (..., 3) linear sRGB reflectance relative to the paper."""
    factors = 1.0 - cmyk[..., :, None] * (1.0 - INKS)  # (..., 4, 3)
    return factors.prod(axis=-2)


def encode_srgb(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


def press_srgb(cmyk_8bit) -> np.ndarray:
    """8-bit CMYK values -> the 8-bit sRGB colour the press model prints them as."""
    rgb = encode_srgb(press_linear(np.asarray(cmyk_8bit, np.float64) / 255.0))
    return np.rint(rgb * 255).astype(np.uint8)


def _linear_to_lab(linear: np.ndarray) -> np.ndarray:
    xyz = linear @ SRGB_TO_XYZ_D65.T @ BRADFORD_D65_TO_D50.T / D50  # (..., 3) relative to D50
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def _lab_to_linear(lab: np.ndarray) -> np.ndarray:
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    xyz = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * D50
    return xyz @ np.linalg.inv(BRADFORD_D65_TO_D50).T @ np.linalg.inv(SRGB_TO_XYZ_D65).T


def _separate(linear: np.ndarray, iterations: int = 40) -> np.ndarray:
    """(N, 3) linear sRGB -> (N, 4) CMYK: black by a simple grey-component rule, then C, M, Y by damped
    Gauss-Newton in log reflectance (out-of-gamut colours end at the nearest reachable ink mix)."""
    target = np.clip(linear, 1e-4, 1.0)
    k = np.clip(1.2 * (1.0 - np.cbrt(target.max(axis=-1))) - 0.2, 0.0, 1.0)  # (N,) black for dark greys only
    cmyk = np.concatenate([np.full((len(target), 3), 0.3), k[:, None]], axis=-1)
    log_target = np.log(target)
    for _ in range(iterations):
        factors = 1.0 - cmyk[:, :, None] * (1.0 - INKS)  # (N, 4, 3)
        residual = np.log(factors).sum(axis=1) - log_target  # (N, 3)
        jacobian = (-(1.0 - INKS[:3]) / factors[:, :3]).transpose(0, 2, 1)  # (N, 3 channels, 3 inks)
        step = np.linalg.solve(jacobian + 1e-6 * np.eye(3), residual[..., None])[..., 0]
        cmyk[:, :3] = np.clip(cmyk[:, :3] - 0.7 * step, 0.0, 1.0)
    return cmyk


def _lut16(inputs: int, outputs: int, grid: int, table: np.ndarray) -> bytes:
    """lut16Type ('mft2'): identity matrix and 2-entry identity curves around the grid `table`,
    (grid ** inputs, outputs) uint16, first input channel varying slowest."""
    identity = [65536, 0, 0, 0, 65536, 0, 0, 0, 65536]
    head = b"mft2" + bytes(4) + struct.pack(">BBBB9iHH", inputs, outputs, grid, 0, *identity, 2, 2)
    curves = lambda n: struct.pack(f">{2 * n}H", *([0, 65535] * n))  # noqa: E731
    return head + curves(inputs) + table.astype(">u2").tobytes() + curves(outputs)


def _lab16(lab: np.ndarray) -> np.ndarray:
    """Lab -> the ICC v2 16-bit encoding of lut16 tables (L 100 = 0xFF00, a/b 0 = 0x8000)."""
    enc = np.stack([lab[..., 0] * 652.8, (lab[..., 1] + 128) * 256, (lab[..., 2] + 128) * 256], -1)
    return np.clip(np.rint(enc), 0, 65535)


def _text_description(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    return b"desc" + bytes(4) + struct.pack(">I", len(ascii_)) + ascii_ + bytes(4 + 4 + 2 + 1 + 67)


def _xyz(values) -> bytes:
    return b"XYZ " + bytes(4) + struct.pack(">3i", *(round(v * 65536) for v in values))


@functools.lru_cache(maxsize=None)
def press_icc(a2b_grid: int = 17, b2a_grid: int = 33) -> bytes:
    """The profile's bytes (made once: ~0.8 MB, a second to build)."""
    axis = np.linspace(0.0, 1.0, a2b_grid)
    nodes = np.stack(np.meshgrid(axis, axis, axis, axis, indexing="ij"), -1).reshape(-1, 4)  # (g^4, 4) CMYK
    a2b = _lut16(4, 3, a2b_grid, _lab16(_linear_to_lab(press_linear(nodes))))
    enc = np.linspace(0.0, 65535.0, b2a_grid)
    lab = np.stack(np.meshgrid(enc / 652.8, enc / 256 - 128, enc / 256 - 128, indexing="ij"), -1).reshape(-1, 3)
    b2a = _lut16(3, 4, b2a_grid, np.clip(np.rint(_separate(_lab_to_linear(lab)) * 65535), 0, 65535))
    tags = [
        (b"desc", _text_description("mgie-batch test press (four-ink model)")),
        (b"cprt", b"text" + bytes(4) + b"No copyright, test data\0"),
        (b"wtpt", _xyz(D50)),
        (b"A2B0", a2b),
        (b"B2A0", b2a),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for signature, data in tags:
        data += bytes(-len(data) % 4)  # every tag starts on a 4-byte boundary
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = struct.pack(
        ">I4s4s4s4s4s6H4s", size, b"", bytes([2, 0x10, 0, 0]), b"prtr", b"CMYK", b"Lab ", 2026, 11, 28, 0, 0, 0, b"acsp"
    )
    header += bytes(68 - len(header)) + _xyz(D50)[8:] + bytes(128 - 80)
    return header + table + body
