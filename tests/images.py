"""A corpus of image files that break naive code, generated on the fly (shared by several tests)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


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
