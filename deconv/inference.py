"""Turn any image Pillow can open into the 32x32 RGB input the model saw, and classify it."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deconv.config import IMAGE_SIZE, NUM_CLASSES

MAX_PIXELS = 40_000_000  # larger declared sizes are refused before decoding (decompression bombs)
MAX_BYTES = 10 * 1024 * 1024  # the same limit as the app's upload size
BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white


class ImageError(Exception):
    """A file that cannot be classified; the message says why in plain words."""


@dataclass(frozen=True)
class Prediction:
    """Top-k labels with probabilities for one image."""

    labels: list[str]
    probabilities: list[float]

    def as_json(self) -> list[dict[str, Any]]:
        """[{"label": NAME, "probability": P}, ...]."""
        return [{"label": lab, "probability": round(p, 6)} for lab, p in zip(self.labels, self.probabilities)]


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any mode: 16-bit and float scaled to 8 bits, transparency composited on white."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if img.mode == "F" and arr.max(initial=0) <= 1.0 else (255.0 if arr.max(initial=0) <= 255 else 65535.0)
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(flat, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(source: bytes | str | os.PathLike[str]) -> Image.Image:
    """The upright, RGB, first-frame image, or ImageError."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("the file is empty")
        if len(source) > MAX_BYTES:
            raise ImageError(f"the file is {len(source) / 2**20:.1f} MB, more than the {MAX_BYTES // 2**20} MB limit")
        stream: Any = io.BytesIO(source)
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as e:
            raise ImageError(f"cannot read it: {e.strerror or e}") from None
        if size == 0:
            raise ImageError("the file is empty")
        if size > MAX_BYTES:
            raise ImageError(f"the file is {size / 2**20:.1f} MB, more than the {MAX_BYTES // 2**20} MB limit")
        stream = path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageError(f"it declares {img.width}x{img.height} pixels, more than the "
                                     f"{MAX_PIXELS // 1_000_000}-million-pixel limit")
                img.seek(0)  # the first frame of an animation
                img.draft("RGB", (IMAGE_SIZE * 4, IMAGE_SIZE * 4))  # JPEG: decode at a reduced scale, much faster
                img.load()
                return _to_rgb(ImageOps.exif_transpose(img))  # new images: the file can be closed
    except UnidentifiedImageError:
        raise ImageError("it is not an image Pillow can read (png, jpg, gif, bmp, webp, ...)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"it declares more pixels than the {MAX_PIXELS // 1_000_000}-million-pixel limit "
                         "(a decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"the image data is damaged or truncated ({e})") from None
    except (KeyError, TypeError, IndexError) as e:  # malformed metadata (EXIF) that Pillow trips over
        raise ImageError(f"its metadata is malformed ({type(e).__name__}: {e})") from None


def model_view(img: Image.Image) -> Image.Image:
    """The 32x32 view the model sees: a centred square crop, resized with Lanczos."""
    return ImageOps.fit(img, (IMAGE_SIZE, IMAGE_SIZE), method=Image.Resampling.LANCZOS)


def prepare(source: bytes | str | os.PathLike[str]) -> np.ndarray:
    """uint8 array (32, 32, 3) for one image file or its bytes; ImageError if it cannot be read."""
    return np.asarray(model_view(open_image(source)), dtype=np.uint8)


def top_k(probabilities: np.ndarray, label_names: list[str], k: int = 5) -> Prediction:
    """The k most probable labels of one probability vector."""
    order = np.argsort(probabilities)[::-1][:k]
    return Prediction([label_names[i] for i in order], [float(probabilities[i]) for i in order])


def label_names_of(meta: dict[str, Any]) -> list[str]:
    """The class names a run recorded, or the standard CIFAR-10 names."""
    names = meta.get("label_names")
    return list(names) if isinstance(names, list) and len(names) == NUM_CLASSES else list(CIFAR10_LABELS)


CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def classify(model: Any, x: np.ndarray, label_names: list[str], k: int = 5) -> list[Prediction]:
    """Top-k predictions for a batch of uint8 images (N, 32, 32, 3)."""
    from deconv.train import predict

    return [top_k(p, label_names, k) for p in predict(model, x)]


def enlarge(view: Image.Image | np.ndarray, size: int = 128) -> Image.Image:
    """The 32x32 view scaled up with square pixels, to show what the model sees."""
    img = Image.fromarray(view) if isinstance(view, np.ndarray) else view
    return img.resize((size, size), Image.Resampling.NEAREST)


def preview(img: Image.Image, size: int = 150) -> Image.Image:
    """A copy that fits in size x size, keeping the aspect ratio, never thinner than one pixel."""
    scale = min(1.0, size / img.width, size / img.height)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
