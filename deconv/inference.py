"""Turn any image Pillow can open into the 32x32 RGB input the model saw, classify it, and say how sure it is."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deconv.config import IMAGE_SIZE, NUM_CLASSES

MAX_PIXELS = 40_000_000  # larger declared sizes are refused before decoding (decompression bombs)
MAX_BYTES = 10 * 1024 * 1024  # the same limit as the app's upload size
BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white

# When an answer is "unsure". The network has only its ten classes to answer with, so a picture of anything
# else still gets one of them; a low or contested top probability is the hint it gives. The rule reads the
# top two probabilities only, the numbers the page shows beside the answer (a Prediction may hold only its
# top k, so a normalised entropy over all ten classes is not always at hand, and a reader could not check it).
SURE_AT = 0.6  # a top class below this probability is unsure
SURE_RATIO = 2.0  # ... and so is one with less than this many times the runner-up's probability (torn between two)
UNSURE_RULE = (f"its top class has less than {SURE_AT:.0%}, or less than {SURE_RATIO:g} times the "
               "probability of the next one")
MAX_PICTURES = 20  # uploaded pictures a session keeps (about 70 kB each: a preview and the 32x32 view); oldest go


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

    @property
    def confident(self) -> bool:
        """Whether the top answer passes UNSURE_RULE: at least SURE_AT, and SURE_RATIO times the runner-up."""
        top = self.probabilities[0] if self.probabilities else 0.0
        second = self.probabilities[1] if len(self.probabilities) > 1 else 0.0
        return top >= SURE_AT and top >= SURE_RATIO * second

    def confidence_note(self, maybe_other: bool = False) -> str:
        """Empty for a confident answer, else "unsure: ..."; maybe_other adds that the picture may show none of
        the classes (true of an upload, not of a CIFAR-10 test image)."""
        if self.confident:
            return ""
        return "unsure: the model is not confident" + ("; it may not be one of its ten classes" if maybe_other else "")


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


def classify(model: Any, x: np.ndarray, label_names: list[str], k: int = 5, batch_size: int = 256) -> list[Prediction]:
    """Top-k predictions for a batch of uint8 images (N, 32, 32, 3), `batch_size` at a time (memory: cost.eval_batch)."""
    from deconv.train import predict

    return [top_k(p, label_names, k) for p in predict(model, x, batch_size)]


def enlarge(view: Image.Image | np.ndarray, size: int = 128) -> Image.Image:
    """The 32x32 view scaled up with square pixels, to show what the model sees."""
    img = Image.fromarray(view) if isinstance(view, np.ndarray) else view
    return img.resize((size, size), Image.Resampling.NEAREST)


def preview(img: Image.Image, size: int = 150) -> Image.Image:
    """A copy that fits in size x size, keeping the aspect ratio, never thinner than one pixel."""
    scale = min(1.0, size / img.width, size / img.height)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)


@dataclass(frozen=True, eq=False)  # eq=False: arrays do not compare to one bool; a picture is itself
class Picture:
    """One uploaded picture as a session keeps it: what is shown and classified, not the file's bytes."""

    number: int  # 0, 1, 2, ... in order of upload, never reused: a stable key for the picture's widgets
    name: str
    digest: str  # sha256 of the file's bytes
    preview: np.ndarray  # uint8 RGB, fits in 150x150
    view: np.ndarray  # uint8 (32, 32, 3): what the model sees


@dataclass
class Pictures:
    """The last `limit` pictures a session uploaded, oldest first, and the files of the last upload that failed.

    The same file (same name, same bytes) is kept once: uploading it again moves it to the newest place.
    The same bytes under another name are another picture, as the visitor named them.
    """

    limit: int = MAX_PICTURES
    items: list[Picture] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file name, why it cannot be classified)
    added: int = 0  # pictures ever added: the next one's number

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"a Pictures limit must be at least 1, not {self.limit}")

    def add(self, name: str, content: bytes) -> Picture:
        """Keep one uploaded file as a Picture, dropping the oldest beyond limit; ImageError if it cannot be read."""
        digest = hashlib.sha256(content).hexdigest()
        kept = next((p for p in self.items if p.name == name and p.digest == digest), None)
        if kept is None:
            img = open_image(content)
            kept = Picture(self.added, name, digest, np.asarray(preview(img), dtype=np.uint8),
                           np.asarray(model_view(img), dtype=np.uint8))
            self.added += 1
        self.items = [p for p in self.items if p is not kept] + [kept]
        del self.items[:-self.limit]
        return kept

    def upload(self, files: Iterable[tuple[str, bytes]]) -> None:
        """Add every (name, bytes) of one upload; those that cannot be read become this upload's problems."""
        self.problems = []
        for name, content in files:
            try:
                self.add(name, content)
            except ImageError as e:
                self.problems.append((name, str(e)))

    def clear(self) -> None:
        """Forget every picture and problem."""
        self.items, self.problems = [], []

    def views(self) -> np.ndarray:
        """uint8 (N, 32, 32, 3): the model's view of every picture, oldest first."""
        if not self.items:
            return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        return np.stack([p.view for p in self.items])

    def __iter__(self) -> Iterator[Picture]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)
