"""Visitors' pictures: a PNG, JPEG, GIF, BMP or WebP file turned into the 32x32 RGB input the model saw.

Every file may come from a hostile stranger (the app is one server shared by a class or the public): only five
formats are parsed, the pieces of a JPEG's, PNG's or GIF's headers are counted before Pillow reads them one by one,
a picture is shrunk before anything else is done with it, a JPEG's scans are counted before it is decoded, one
upload stops reading files after about a second of CPU time, and a session keeps a preview and the 32x32 view of
each, never the file or the decoded picture."""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from deconv.config import IMAGE_SIZE

FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "GIF": "GIF", "BMP": "BMP", "WEBP": "WebP"}  # Pillow's name: ours
FILE_TYPES = ("png", "jpg", "jpeg", "gif", "bmp", "webp")  # the file name endings of FORMATS, for the uploader
# Larger declared sizes are refused before decoding (decompression bombs). Decoded whole, a PNG, GIF or BMP this
# size takes up to 160 MB and a second (measured: 8000x5000 RGBA PNG), a JPEG a few MB (decoded at 1/8 scale), a
# progressive one 230 MB (libjpeg keeps every coefficient until the last scan: measured at 8000x5000, 4:4:4); a
# WebP takes about 15 bytes a pixel (libwebp's canvas and two copies of it in Pillow: 610 MB at 40 million), hence
# its own limit, for about 250 MB.
MAX_PIXELS = 40_000_000
MAX_WEBP_PIXELS = 16_000_000
MAX_BYTES = 10 * 1024 * 1024  # the same limit as the app's upload size
MAX_FILES_PER_UPLOAD = 20  # files of one upload that are read; more could not all be kept (MAX_PICTURES) anyway
# libjpeg decodes a JPEG scan by scan, each scan a pass over the whole picture: a baseline JPEG has 1, a progressive
# one about 10 (18 in CMYK), an EXIF thumbnail or a phone's second picture 1 more each. A file of many tiny scans is
# a time bomb that draft() does not defuse, since every scan is read at any scale (measured: 0.56 MB of 1,000 scans
# over 40 million pixels took 23 s; 0.69 MB of 20,000 over 1 million, 11 s). So the scans are counted before
# decoding, at a few ms a MB. The costliest scan, a 30-byte DC scan of a CMYK file, takes about 1.5 ns a pixel,
# so 16 scans of the largest picture take about a second, as long as the largest PNG (0.7 s, MAX_PIXELS of RGBA).
MAX_SCANS = 100
MAX_SCAN_PIXELS = 16 * MAX_PIXELS  # scans x pixels: 16 scans at the pixel limit, 100 up to 6.4 million pixels
# Pillow reads a file's headers in Python, a few bytes at a time, before it knows the picture's size: a 10 MB file
# made of tiny pieces keeps that loop busy for seconds. So the pieces it would loop over are counted first, with
# C-level searches where the pieces are bytes, stopping at the first bound; each bound below holds Pillow's loop
# to tens of ms, far above what an ordinary file has. Measured with Pillow 13 (CPU time, median of 3):
# JPEG, up to the first scan: Pillow reads padding (FF fill bytes, stray bytes) one byte at a time, 0.06 to 0.4 us
# a byte: 4.2 s for 10 MB of fill after the start marker (3.5 s, then a wrong "JPEG format" error, with nothing after
# it). An ordinary JPEG has none or a few bytes; 64 kB cost 26 ms.
MAX_JPEG_PADDING = 65_536
# ... and each segment (a table, APPn metadata, a comment) takes 0.7 to 1.2 us: 3.0 s for 2.6 million empty APP1s.
# An ordinary JPEG has about 10, a photo with an ICC profile and XMP in 64 kB pieces some tens (10 MB holds 160).
MAX_JPEG_SEGMENTS = 1_000
# ... and parses frame (SOFn) and quantization table (DQT) segments an item at a time, whatever their number: 0.86 s
# and 295 MB for 10 MB of 64 kB frame segments (a 3-byte component each), 0.52 s for DQTs of 1,008 tables each. An
# ordinary JPEG has a few hundred bytes of them; 64 kB cost 5 ms.
MAX_JPEG_TABLE_BYTES = 65_536
# PNG: Pillow reads every chunk (length, type, data, checksum) in Python at 2 to 2.6 us: 2.3 s for 870,000 empty
# private chunks, 1.8 s for as many empty IDATs. A 10 MB PNG in libpng's 8 kB IDAT chunks has 1,300; the bound costs
# 50 ms.
MAX_PNG_CHUNKS = 20_000
# ... and inflates every iCCP, zTXt and iTXt chunk up to 1 MB, uncounted by its own text limit when the text has no
# keyword or is not UTF-8: 22 s for 10 MB of 1 kB chunks inflating to 1 MB each (2.3 to 3.2 ms a chunk). An
# ordinary PNG has a colour profile and a few texts; the bound costs 50 ms, so that with MAX_PNG_CHUNKS and the largest
# picture (0.7 s) a PNG stays under a second.
MAX_PNG_PACKED_CHUNKS = 16
# GIF, up to the first picture: Pillow reads extensions a sub-block at a time (0.12 to 0.19 us) and skips stray bytes
# one at a time (0.08 us): 1.1 s for a 10 MB comment of 1-byte sub-blocks, 0.8 s for 10 MB of stray bytes. An
# ordinary GIF has a few pieces there (loop count, frame timing, a comment); 10,000 full ones are 2.5 MB, and 10,000
# pieces of any kind cost Pillow 3 ms (10 ms for empty extensions, each a piece).
MAX_GIF_PIECES = 10_000
# CPU time (the upload's thread's, not the server's) after which one upload reads no more files. The file being
# read then adds at most one file's worst case, about a second (see MAX_SCAN_PIXELS), so an upload costs at most
# about 2 s however many files it holds. Measured: a 12-megapixel phone photo takes 0.05 s (baseline JPEG) to
# 0.15 s (progressive), so an upload of 20 baseline photos is read whole, or nearly.
UPLOAD_SECONDS = 1.0
BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white
PREVIEW_SIZE = 150  # a preview fits in this many pixels square
OVERSAMPLE = 4  # a decoded picture is first shrunk to about this many times the sizes shown (see reduction)
BAND_PIXELS = 1 << 20  # pixels converted at a time while a picture is shrunk: a few MB whatever its size

MAX_PICTURES = 20  # uploaded pictures a session keeps (about 70 kB each: a preview and the 32x32 view); oldest go


class ImageError(Exception):
    """A file that cannot be classified; the message says why in plain words."""


def reduction(width: int, height: int) -> int:
    """How many times smaller a decoded picture is made before anything else is done with it: its short side keeps
    OVERSAMPLE times the 32 pixels of the centre crop the model sees, its long side OVERSAMPLE times the preview's.
    Resampling from there gives the same view and preview as from full size, give or take a grey level or two."""
    short, long = sorted((width, height))
    return max(1, min(short // (OVERSAMPLE * IMAGE_SIZE), long // (OVERSAMPLE * PREVIEW_SIZE)))


def _reducible_mode(img: Image.Image) -> str:
    """The mode a picture is averaged in: Image.reduce cannot average palette indices, 1-bit or 16-bit pixels."""
    if img.mode in ("P", "PA"):
        return "RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB"
    return "L" if img.mode == "1" else "I" if img.mode.startswith("I;16") else img.mode


def _small_rgb(img: Image.Image, factor: int) -> Image.Image:
    """RGB, `factor` times smaller (box average): 16-bit and float scaled to 8 bits, transparency shown on white.

    The picture is shrunk a band of rows at a time before any conversion, so that no copy of it is made at full size
    in another mode. Measured on an 89 kB 16-bit 8000x5000 PNG: converting it whole to float64 first cost 1 GB of
    peak memory and 4.6 s; shrunk first, 84 MB (the decoded picture itself) and 0.4 s."""
    mode = _reducible_mode(img)
    if factor == 1 and mode == img.mode and mode not in ("I", "F"):
        small = img
    else:
        small = Image.new(mode, (-(-img.width // factor), -(-img.height // factor)))
        rows = max(1, BAND_PIXELS // (img.width * factor)) * factor
        peak = 0.0  # the largest value of a 16-bit or float picture at full size: it decides the scale below
        for top in range(0, img.height, rows):
            band = img.crop((0, top, img.width, min(img.height, top + rows)))
            band = band if band.mode == mode else band.convert(mode)
            if mode in ("I", "F"):
                peak = max(peak, band.getextrema()[1])
            small.paste(band.reduce(factor), (0, top // factor))
        if mode in ("I", "F"):
            top_value = 1.0 if mode == "F" and peak <= 1.0 else (255.0 if peak <= 255 else 65535.0)
            scaled = np.asarray(small, dtype=np.float32) * np.float32(255.0 / top_value)
            small = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L")
    if small.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = small.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(flat, rgba).convert("RGB")
    return small.convert("RGB")


def _other_format(head: bytes) -> str | None:
    """The name of a format Pillow knows but this module does not take, from a file's first bytes (its signature:
    nothing is parsed), or None."""
    Image.init()
    for name, (_, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(head):
                return name
        except (SyntaxError, IndexError, TypeError, struct.error):  # as in Image.open: a signature cut short
            continue
    return None


def _check_scans(content: bytes | bytearray, width: int, height: int) -> None:
    """ImageError if a JPEG has more scans than MAX_SCANS, or than MAX_SCAN_PIXELS allows a picture of its size.

    A scan starts with an SOS marker, the bytes FF DA, which cannot occur in a scan's coded data (there an FF byte is
    followed by 00 or a restart marker): counting them in the whole file never counts fewer scans than libjpeg reads,
    only more where a thumbnail, a second picture or metadata holds some."""
    scans = content.count(b"\xff\xda")
    allowed = min(MAX_SCANS, MAX_SCAN_PIXELS // (width * height))
    if scans > allowed:
        raise ImageError(f"it is a JPEG of {scans:,} scans (passes over the whole picture), more than the "
                         f"{allowed:,} a picture of {width}x{height} pixels may have; save it as an ordinary "
                         "(baseline) JPEG or as a PNG")


_NOT_FF = re.compile(rb"[^\xff]")  # the end of a run of JPEG fill bytes
_GIF_BLOCK = re.compile(rb"[!,;]")  # the start of a GIF extension, picture or trailer: Pillow skips any other byte


def _check_jpeg_headers(content: bytes | bytearray) -> None:
    """ImageError if a JPEG, up to its first scan (where Pillow's reading stops), has more than MAX_JPEG_PADDING
    bytes of padding, MAX_JPEG_SEGMENTS segments or MAX_JPEG_TABLE_BYTES of tables; markers are walked as Pillow
    walks them, segments skipped."""
    padding = segments = tables = 0
    pos, end = 2, len(content)  # after the start-of-image marker
    while (pos < end and padding <= MAX_JPEG_PADDING and segments <= MAX_JPEG_SEGMENTS
           and tables <= MAX_JPEG_TABLE_BYTES):
        window = min(end, pos + MAX_JPEG_PADDING - padding + 2)  # far enough to pass the bound, and no further
        if content[pos] != 0xFF:  # stray bytes, up to the next FF
            ff = content.find(b"\xff", pos, window)
            stop = window if ff < 0 else ff
            padding, pos = padding + stop - pos, stop
            continue
        after = _NOT_FF.search(content, pos, window)  # the last FF of a run starts a marker; the others are fill
        if after is None:
            padding, pos = padding + window - pos, window
            continue
        code, marker = after.start(), 0xFF00 | content[after.start()]
        padding += code - 1 - pos
        if marker == 0xFF00:  # an FF 00 pair, which Pillow skips too
            padding, pos = padding + 2, code + 1
        elif marker == 0xFFDA or marker not in JpegImagePlugin.MARKER:
            break  # the first scan; or no marker, which Pillow refuses itself
        elif JpegImagePlugin.MARKER[marker][2] is None:  # a marker without a length: SOI, EOI, RSTn
            segments, pos = segments + 1, code + 1
        else:  # a segment: a 2-byte length that counts itself, then the data
            length = int.from_bytes(content[code + 1:code + 3], "big")
            segments, pos = segments + 1, code + 1 + length
            if JpegImagePlugin.MARKER[marker][2] in (JpegImagePlugin.SOF, JpegImagePlugin.DQT):
                tables += length
    if padding > MAX_JPEG_PADDING:
        raise ImageError(f"it is a JPEG with more than {MAX_JPEG_PADDING:,} bytes of padding (fill or stray bytes "
                         "between its headers), which no ordinary JPEG has; save it again as an ordinary JPEG or as "
                         "a PNG")
    if segments > MAX_JPEG_SEGMENTS:
        raise ImageError(f"it is a JPEG with more than {MAX_JPEG_SEGMENTS:,} header segments (tables, metadata or "
                         "comments) before its picture data, which no ordinary JPEG has; save it again as an ordinary "
                         "JPEG or as a PNG")
    if tables > MAX_JPEG_TABLE_BYTES:
        raise ImageError(f"it is a JPEG with more than {MAX_JPEG_TABLE_BYTES:,} bytes of frame and quantization "
                         "tables (an ordinary JPEG has a few hundred); save it again as an ordinary JPEG or as a PNG")


def _check_png_chunks(content: bytes | bytearray) -> None:
    """ImageError if a PNG has more than MAX_PNG_CHUNKS chunks, or more than MAX_PNG_PACKED_CHUNKS compressed
    metadata chunks; only each chunk's 8-byte header (length and type) is read."""
    chunks = packed = 0
    pos, end = 8, len(content)  # after the signature
    while pos + 8 <= end and chunks <= MAX_PNG_CHUNKS and packed <= MAX_PNG_PACKED_CHUNKS:
        length, kind = struct.unpack_from(">I4s", content, pos)
        chunks, packed = chunks + 1, packed + (kind in (b"iCCP", b"zTXt", b"iTXt"))
        if kind == b"IEND":
            break
        pos += 12 + length  # length, type, data, checksum
    if chunks > MAX_PNG_CHUNKS:
        raise ImageError(f"it is a PNG of more than {MAX_PNG_CHUNKS:,} chunks (pieces of picture data or metadata), "
                         "which no ordinary PNG has; save it again as an ordinary PNG")
    if packed > MAX_PNG_PACKED_CHUNKS:
        raise ImageError(f"it is a PNG with more than {MAX_PNG_PACKED_CHUNKS} compressed metadata chunks (colour "
                         "profiles or texts), which no ordinary PNG has; save it again as an ordinary PNG, without "
                         "its metadata")


def _check_gif_blocks(content: bytes | bytearray) -> None:
    """ImageError if the extensions and stray bytes before a GIF's first picture come in more than MAX_GIF_PIECES
    pieces (extensions, their sub-blocks, single stray bytes), which Pillow reads one at a time."""
    flags = content[10] if len(content) > 10 else 0
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the screen descriptor and global palette
    pieces, end = 0, len(content)
    while pos < end and pieces <= MAX_GIF_PIECES:
        if content[pos] in b",;":  # the first picture, or the end of the file
            break
        if content[pos] == 0x21:  # "!", a label, then sub-blocks (a length byte, up to 255 bytes) until a 0 length
            pieces, pos = pieces + 1, pos + 2
            while pos < end and content[pos] and pieces <= MAX_GIF_PIECES:
                pieces, pos = pieces + 1, pos + 1 + content[pos]
            pos += 1
        else:  # stray bytes, up to the next extension, picture or trailer, or just past the bound
            window = min(end, pos + MAX_GIF_PIECES - pieces + 1)
            block = _GIF_BLOCK.search(content, pos, window)
            stop = window if block is None else block.start()
            pieces, pos = pieces + stop - pos, stop
    if pieces > MAX_GIF_PIECES:
        raise ImageError(f"it is a GIF whose metadata before its first picture comes in more than "
                         f"{MAX_GIF_PIECES:,} pieces (blocks or stray bytes), which no ordinary GIF has; save "
                         "it again as an ordinary GIF or as a PNG")


def _check_headers(content: bytes | bytearray) -> None:
    """ImageError if the headers Pillow reads in Python would cost it more than tens of ms (see MAX_JPEG_PADDING);
    the format is told from the signature Pillow itself checks."""
    if content[:3] == b"\xff\xd8\xff":
        _check_jpeg_headers(content)
    elif content[:8] == b"\x89PNG\r\n\x1a\n":
        _check_png_chunks(content)
    elif content[:6] in (b"GIF87a", b"GIF89a"):
        _check_gif_blocks(content)


def open_image(source: bytes | str | os.PathLike[str]) -> Image.Image:
    """The upright, RGB, first-frame picture, shrunk to no more than `reduction` needs, or ImageError."""
    if isinstance(source, (bytes, bytearray)):
        content, size = source, len(source)
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
            content = path.read_bytes() if size <= MAX_BYTES else b""
        except OSError as e:
            raise ImageError(f"cannot read it: {e.strerror or e}") from None
    if size == 0:
        raise ImageError("the file is empty")
    if size > MAX_BYTES:
        raise ImageError(f"the file is {size / 2**20:.1f} MB, more than the {MAX_BYTES // 2**20} MB limit")
    _check_headers(content)
    head = bytes(content[:16])  # where Pillow looks for a format's signature
    taken = ", ".join(FORMATS.values())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content), formats=list(FORMATS)) as img:
                limit = MAX_WEBP_PIXELS if img.format == "WEBP" else MAX_PIXELS
                if img.width * img.height > limit:
                    raise ImageError(f"it declares {img.width}x{img.height} pixels, more than the "
                                     f"{limit // 1_000_000}-million-pixel limit"
                                     + (" of a WebP file" if limit == MAX_WEBP_PIXELS else ""))
                if isinstance(img, JpegImagePlugin.JpegImageFile):  # a phone's multi-picture JPEG (MPO) too
                    _check_scans(content, img.width, img.height)
                img.seek(0)  # the first frame of an animation
                factor = reduction(img.width, img.height)
                # JPEG: decode at 1/2, 1/4 or 1/8 scale, no smaller than the reduction keeps; much faster
                img.draft("RGB", (-(-img.width // factor), -(-img.height // factor)))
                img.load()
                small = _small_rgb(img, reduction(img.width, img.height))
                small.info = img.info  # the EXIF orientation, applied to the small picture
                return ImageOps.exif_transpose(small)  # new images: the file can be closed
    except UnidentifiedImageError:
        other = _other_format(head)
        if other in FORMATS:  # its signature is one of ours, but Pillow found no picture after it
            raise ImageError(f"the image data is damaged or truncated (no {FORMATS[other]} picture found after its "
                             "signature)") from None
        if other is not None:
            raise ImageError(f"it is in {other} format, not one of the formats taken here: {taken}") from None
        raise ImageError(f"it is not an image in a format taken here ({taken})") from None
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


def enlarge(view: Image.Image | np.ndarray, size: int = 128) -> Image.Image:
    """The 32x32 view scaled up with square pixels, to show what the model sees."""
    img = Image.fromarray(view) if isinstance(view, np.ndarray) else view
    return img.resize((size, size), Image.Resampling.NEAREST)


def preview(img: Image.Image, size: int = PREVIEW_SIZE) -> Image.Image:
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
    The same bytes under another name are another picture, as the visitor named them, but are not decoded again;
    nor are the bytes of a recent file that could not be read. One upload is read up to MAX_FILES_PER_UPLOAD files.
    """

    limit: int = MAX_PICTURES
    items: list[Picture] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file name, why it cannot be classified)
    left_out: int = 0  # files of the last upload beyond MAX_FILES_PER_UPLOAD: not read at all
    refused: dict[str, str] = field(default_factory=dict)  # sha256 -> why it cannot be read, of the last `limit`
    added: int = 0  # pictures ever added: the next one's number

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"a Pictures limit must be at least 1, not {self.limit}")

    def add(self, name: str, content: bytes) -> Picture:
        """Keep one uploaded file as a Picture, dropping the oldest beyond limit; ImageError if it cannot be read."""
        digest = hashlib.sha256(content).hexdigest()
        if digest in self.refused:
            raise ImageError(self.refused[digest])
        same = [p for p in self.items if p.digest == digest]
        kept = next((p for p in same if p.name == name), None)
        if kept is None:
            if same:  # shown under another name: its preview and view (read-only arrays) serve this one too
                shown, view = same[0].preview, same[0].view
            else:
                try:
                    img = open_image(content)
                except ImageError as e:
                    self.refused[digest] = str(e)
                    for old in list(self.refused)[:-self.limit]:
                        del self.refused[old]
                    raise
                shown, view = np.asarray(preview(img), dtype=np.uint8), np.asarray(model_view(img), dtype=np.uint8)
            kept = Picture(self.added, name, digest, shown, view)
            self.added += 1
        self.items = [p for p in self.items if p is not kept] + [kept]
        del self.items[:-self.limit]
        return kept

    def upload(self, files: Sequence[tuple[str, bytes]]) -> None:
        """Add the (name, bytes) of one upload, its first MAX_FILES_PER_UPLOAD files (the others are `left_out`);
        those that cannot be read become this upload's problems, and so do those left unread once reading the others
        took UPLOAD_SECONDS of CPU time."""
        self.problems, self.left_out = [], max(0, len(files) - MAX_FILES_PER_UPLOAD)
        start = time.thread_time()  # this thread's: other sessions' work does not count
        for i, (name, content) in enumerate(files[:MAX_FILES_PER_UPLOAD]):
            if time.thread_time() - start >= UPLOAD_SECONDS:
                why = (f"it was not read, as this upload had already taken its {UPLOAD_SECONDS:g} s of reading time "
                       "on the files before it; upload it again, with fewer or smaller files")
                self.problems += [(unread, why) for unread, _ in files[i:MAX_FILES_PER_UPLOAD]]
                break
            try:
                self.add(name, content)
            except ImageError as e:
                self.problems.append((name, str(e)))

    def clear(self) -> None:
        """Forget every picture and problem."""
        self.items, self.problems, self.left_out, self.refused = [], [], 0, {}

    def views(self) -> np.ndarray:
        """uint8 (N, 32, 32, 3): the model's view of every picture, oldest first."""
        if not self.items:
            return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        return np.stack([p.view for p in self.items])

    def __iter__(self) -> Iterator[Picture]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)
