"""Sample data in CIFAR-10's official python format and sample image files, for tests, benchmarks and demos.

The CIFAR folders hold synthetic pictures (each class its own colour, so a network can learn them); the image
files are the awkward kinds that break naive code: rotated, animated, 16-bit, truncated, declaring huge sizes.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from deconv.config import CIFAR10_LABELS

LABELS = list(CIFAR10_LABELS)


def synthetic_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """uint8 (N, 3072) rows in CIFAR's channel-first layout; each class has its own colour, so it can be learnt."""
    rng = np.random.default_rng(seed)
    colours = np.stack([np.linspace(20, 235, 10)[np.roll(np.arange(10), k)] for k in (0, 3, 7)], axis=1)
    img = colours[labels][:, :, None, None] + rng.normal(0, 25, (len(labels), 3, 32, 32))
    return np.clip(img, 0, 255).astype(np.uint8).reshape(len(labels), -1)


def write_batch(path: Path, labels: np.ndarray, seed: int) -> None:
    """One batch file as the official dataset writes it (bytes keys, numpy data)."""
    d = {b"batch_label": b"synthetic", b"labels": [int(v) for v in labels],
         b"data": synthetic_images(labels, seed), b"filenames": [b"img_%d.png" % i for i in range(len(labels))]}
    path.write_bytes(pickle.dumps(d, protocol=4))


def write_cifar(root: Path, train_per_class: int = 30, test_per_class: int = 10, train: bool = True) -> Path:
    """A cifar-10-batches-py folder under root with shuffled synthetic images; returns the folder."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    if train:
        write_batch(folder / "data_batch_1", rng.permutation(np.repeat(np.arange(10), train_per_class)), 1)
    write_batch(folder / "test_batch", rng.permutation(np.repeat(np.arange(10), test_per_class)), 2)
    meta = {b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in LABELS], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))
    return folder


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    """The bytes of an image saved in a format."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 64, h: int = 48) -> Image.Image:
    """An RGB test picture with different content in every quadrant."""
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), np.full_like(xx, 90)], -1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def exif_rotated_jpeg() -> bytes:
    """A JPEG stored sideways (tall 30x60, red on top when shown) with EXIF orientation 6 (rotate 90 clockwise)."""
    upright = Image.new("RGB", (60, 30), "blue")
    upright.paste((255, 0, 0), (0, 0, 60, 15))  # red on top, blue below, when upright (wide)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", exif=exif, quality=95)


def animated_gif() -> bytes:
    """Two frames: green first, then magenta."""
    frames = [Image.new("RGB", (20, 20), c) for c in ((0, 200, 0), (200, 0, 200))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def palette_with_transparency() -> bytes:
    """A palette PNG whose background index is transparent."""
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (4, 4, 12, 12))
    return encode(img, "PNG", transparency=0)


def bomb_png() -> bytes:
    """A tiny PNG that declares 30000x30000 pixels."""
    return encode(Image.new("1", (30000, 30000)), "PNG")


def sixteen_bit_png(width: int = 8000, height: int = 5000) -> bytes:
    """A grey 16-bit (I;16) PNG, black at the left to white at the right: 89 kB as a file, 80 MB decoded."""
    row = (np.arange(width, dtype=np.uint32) * 65535 // max(width - 1, 1)).astype(np.uint16)
    return encode(Image.fromarray(row[None, :]).resize((width, height), Image.Resampling.NEAREST), "PNG")


def webp_declaring(width: int, height: int) -> bytes:
    """A 1x1 lossless WebP whose header says width x height pixels (its pixel data never gets read)."""
    blob = bytearray(encode(Image.new("RGB", (1, 1)), "WEBP", lossless=True))
    assert blob[12:16] == b"VP8L" and blob[20] == 0x2F  # bits 0-13 of bytes 21-24: width - 1; 14-27: height - 1
    rest = int.from_bytes(blob[21:25], "little") & ~((1 << 28) - 1)
    blob[21:25] = (rest | (width - 1) | (height - 1) << 14).to_bytes(4, "little")
    return bytes(blob)


def multi_picture_jpeg() -> bytes:
    """What many phones write: a JPEG followed by a second picture (Pillow calls it MPO); red first, then blue."""
    first, second = Image.new("RGB", (64, 48), (255, 0, 0)), Image.new("RGB", (64, 48), (0, 0, 255))
    return encode(first, "MPO", save_all=True, append_images=[second])


def other_formats() -> dict[str, bytes]:
    """Images Pillow could read, in formats the app does not take, by file name (the PSD is its signature only)."""
    grey16 = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
    return {"photo.tiff": encode(gradient(), "TIFF"), "grey16.tif": encode(grey16, "TIFF"),
            "icon.ico": encode(gradient(), "ICO"), "photo.ppm": encode(gradient(), "PPM"),
            "layers.psd": b"8BPS\x00\x01" + bytes(40)}


def good() -> dict[str, bytes]:
    """Valid images of every awkward kind, by file name."""
    rgba = Image.new("RGBA", (40, 40), (0, 0, 255, 0))
    rgba.paste((255, 0, 0, 255), (10, 10, 30, 30))
    grey16 = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
    return {
        "photo.jpg": encode(gradient(), "JPEG"), "photo.png": encode(gradient(), "PNG"),
        "photo.bmp": encode(gradient(), "BMP"), "photo.webp": encode(gradient(), "WEBP"),
        "photo.gif": encode(gradient().convert("P"), "GIF"), "tiny.png": encode(Image.new("RGB", (1, 1), "red"), "PNG"),
        "strip.png": encode(gradient(10000, 20), "PNG"), "grey16.png": encode(grey16, "PNG"),
        "cmyk.jpg": encode(gradient().convert("CMYK"), "JPEG"), "palette.png": palette_with_transparency(),
        "rgba.png": encode(rgba, "PNG"), "animated.gif": animated_gif(), "rotated.jpg": exif_rotated_jpeg(),
        "png-named.jpg": encode(gradient(), "PNG"),
    }


def bad() -> dict[str, bytes]:
    """Files that must give a clear error, by file name."""
    jpeg, png = encode(gradient(200, 200), "JPEG"), encode(gradient(200, 200), "PNG")
    return {"empty.png": b"", "text.jpg": b"this is a text file, not a picture\n" * 3,
            "truncated.jpg": jpeg[: len(jpeg) // 3], "truncated.png": png[: len(png) // 2], "bomb.png": bomb_png()}
