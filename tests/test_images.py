"""Any image becomes the 32x32 RGB view the model saw; bad files and other formats get a clear ImageError; a huge
picture costs little memory, a JPEG of many scans is refused before decoding, and a file whose headers come in
countless tiny pieces (which Pillow would read one by one) before Pillow opens it; an upload is read up to twenty
files and up to its CPU time, and the same bytes are not decoded twice."""

from __future__ import annotations

import gc
import io
import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, JpegImagePlugin, PngImagePlugin

from deconv import images, samples

ROOT = Path(__file__).resolve().parent.parent
TAKEN = "PNG, JPEG, GIF, BMP, WebP"


@pytest.mark.parametrize("name", list(samples.good()))
def test_awkward_valid_images_become_32x32_rgb(name: str) -> None:
    x = images.prepare(samples.good()[name])
    assert x.shape == (32, 32, 3) and x.dtype == np.uint8


@pytest.mark.parametrize("name", list(samples.good()))
def test_previews_fit_150_pixels_and_keep_at_least_one(name: str) -> None:
    img = images.open_image(samples.good()[name])
    small = images.preview(img)
    assert 1 <= small.width <= 150 and 1 <= small.height <= 150
    assert max(small.size) == min(150, max(img.size))  # as large as fits, never enlarged


@pytest.mark.parametrize("name", list(samples.bad()))
def test_bad_files_get_a_clear_error(name: str) -> None:
    with pytest.raises(images.ImageError) as err:
        images.prepare(samples.bad()[name])
    assert "Traceback" not in str(err.value) and len(str(err.value)) > 10


def test_error_messages_say_what_is_wrong() -> None:
    bad = samples.bad()
    for name, words in [("empty.png", "empty"), ("text.jpg", "not an image"), ("truncated.png", "truncated"),
                        ("bomb.png", "million-pixel limit")]:
        with pytest.raises(images.ImageError, match=words):
            images.prepare(bad[name])


@pytest.mark.parametrize("name", list(samples.other_formats()))
def test_other_formats_are_refused_by_name_with_the_formats_taken(name: str) -> None:
    with pytest.raises(images.ImageError) as err:
        images.prepare(samples.other_formats()[name])
    named = {".tiff": "TIFF", ".tif": "TIFF", ".ico": "ICO", ".ppm": "PPM", ".psd": "PSD"}[Path(name).suffix]
    assert str(err.value) == f"it is in {named} format, not one of the formats taken here: {TAKEN}"


def test_a_file_on_disk_gets_the_same_formats_as_an_upload(tmp_path: Path) -> None:  # the CLI reads paths
    (tmp_path / "photo.tiff").write_bytes(samples.other_formats()["photo.tiff"])
    (tmp_path / "photo.png").write_bytes(samples.good()["photo.png"])
    with pytest.raises(images.ImageError, match="TIFF format, not one of the formats taken here"):
        images.prepare(tmp_path / "photo.tiff")
    assert images.prepare(str(tmp_path / "photo.png")).shape == (32, 32, 3)
    with pytest.raises(images.ImageError, match="cannot read it"):
        images.prepare(tmp_path / "missing.png")


def test_the_uploaders_file_types_are_the_formats_taken() -> None:
    assert ", ".join(images.FORMATS.values()) == TAKEN
    assert {Image.registered_extensions()[f".{t}"] for t in images.FILE_TYPES} == set(images.FORMATS)


def test_a_phones_multi_picture_jpeg_is_read_as_a_jpeg() -> None:
    x = images.prepare(samples.multi_picture_jpeg())
    assert x[16, 16, 0] > 200 and x[16, 16, 2] < 50  # the first picture, red


def test_a_webp_larger_than_its_own_limit_is_refused_before_decoding() -> None:
    with pytest.raises(images.ImageError, match="4100x4000 pixels, more than the 16-million-pixel limit of a WebP"):
        images.prepare(samples.webp_declaring(4100, 4000))
    assert images.MAX_WEBP_PIXELS < 4100 * 4000 < images.MAX_PIXELS


def many_scans(scans: int, width: int = 64, height: int = 48) -> bytes:
    """A progressive JPEG whose last scan is repeated until it has `scans`: each repeat is a few bytes long and one
    more pass of the decoder over the whole picture."""
    data = samples.encode(samples.gradient(width, height), "JPEG", progressive=True)
    last = data.rindex(b"\xff\xda")  # the last scan runs up to the end-of-image marker, the file's last two bytes
    return data[:-2] + data[last:-2] * (scans - data.count(b"\xff\xda")) + data[-2:]


def declaring(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header saying width x height pixels (its scans still cover the pixels it had)."""
    frame = jpeg.index(b"\xff\xc2")  # a progressive frame: marker, length, precision, height, width
    return jpeg[:frame + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[frame + 9:]


class Decoded(Exception):
    """Raised instead of decoding a JPEG, to show that a check came first."""


def never_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on a JPEG raises Decoded where its pixels would be decoded."""
    def load(self: JpegImagePlugin.JpegImageFile) -> None:
        raise Decoded(f"{self.size} decoded")

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", load)


def test_a_jpeg_of_many_scans_is_refused_before_it_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = many_scans(1000)  # 1,000 scans over 40 million pixels took 23 s to decode
    never_decode(monkeypatch)
    with pytest.raises(images.ImageError) as err:
        images.prepare(bomb)
    assert str(err.value) == ("it is a JPEG of 1,000 scans (passes over the whole picture), more than the 100 a "
                              "picture of 64x48 pixels may have; save it as an ordinary (baseline) JPEG or as a PNG")
    assert images.MAX_SCANS == 100


def test_a_larger_picture_may_have_fewer_scans(monkeypatch: pytest.MonkeyPatch) -> None:
    never_decode(monkeypatch)
    assert images.MAX_SCAN_PIXELS // images.MAX_PIXELS == 16  # scans of the largest picture: 10 are common
    with pytest.raises(images.ImageError, match="JPEG of 17 scans .* more than the 16 a picture of 8000x5000 pixels"):
        images.prepare(declaring(many_scans(17), 8000, 5000))
    with pytest.raises(Decoded, match=r"\(1000, 625\) decoded"):  # at the limit it is decoded (at 1/8 scale)
        images.prepare(declaring(many_scans(16), 8000, 5000))
    with pytest.raises(Decoded):  # a smaller picture may have up to MAX_SCANS
        images.prepare(declaring(many_scans(100), 2000, 2000))


def test_ordinary_jpegs_and_one_at_the_scan_limit_still_decode() -> None:
    picture = samples.gradient(640, 480)
    baseline, progressive = samples.encode(picture, "JPEG"), samples.encode(picture, "JPEG", progressive=True)
    assert baseline.count(b"\xff\xda") == 1 and progressive.count(b"\xff\xda") == 10
    at_limit = many_scans(images.MAX_SCANS)
    assert at_limit.count(b"\xff\xda") == images.MAX_SCANS
    for jpeg in (baseline, progressive, at_limit, samples.multi_picture_jpeg()):
        assert images.prepare(jpeg).shape == (32, 32, 3)
    full = np.asarray(images.model_view(picture), int)
    assert np.abs(images.prepare(progressive).astype(int) - full).max() <= 4  # JPEG's loss only


class Opened(Exception):
    """Raised instead of opening a file with Pillow, to show that a check came before Pillow read any header."""


def never_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on Pillow raises Opened where it would start reading a file."""
    def refuse(*args: object, **kwargs: object) -> Image.Image:
        raise Opened("Pillow was asked to open it")

    monkeypatch.setattr(Image, "open", refuse)


def jpeg_with(inserted: bytes, rest: bool = True) -> bytes:
    """A small JPEG with `inserted` right after its start-of-image marker; without the rest of it unless `rest`."""
    jpeg = samples.encode(samples.gradient(), "JPEG")
    return jpeg[:2] + inserted + (jpeg[2:] if rest else b"")


def segment(marker: int, data: bytes = b"") -> bytes:
    """One JPEG segment: its marker, a length that counts itself, the data."""
    return struct.pack(">HH", marker, len(data) + 2) + data


def chunk(kind: bytes, data: bytes = b"") -> bytes:
    """One PNG chunk: length, type, data, checksum."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with(chunks: bytes) -> bytes:
    """A small PNG with `chunks` right after its header chunk (IHDR)."""
    png = samples.encode(samples.gradient(), "PNG")
    return png[:33] + chunks + png[33:]  # the 8-byte signature and the 25-byte IHDR chunk


def gif_with(inserted: bytes) -> bytes:
    """A small GIF with `inserted` (extensions, or stray bytes) before its first picture."""
    gif = samples.encode(samples.gradient().convert("P"), "GIF")
    start = 13 + 3 * (2 << (gif[10] & 7))  # after the screen descriptor and its global palette
    assert gif[start:start + 1] == b","  # the first picture
    return gif[:start] + inserted + gif[start:]


def comment(sub_block: bytes, count: int) -> bytes:
    """A GIF comment extension made of `count` copies of one sub-block."""
    return b"!\xfe" + (bytes([len(sub_block)]) + sub_block) * count + b"\x00"


def test_a_jpeg_padded_with_megabytes_of_fill_bytes_is_refused_before_pillow_reads_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 10 MB of fill: Pillow read it a byte at a time, 4.2 s (3.5 s, then a wrong error, with nothing after it)
    fill = b"\xff" * (images.MAX_BYTES - 10_000)
    never_open(monkeypatch)
    for bomb in (jpeg_with(fill), jpeg_with(fill, rest=False), jpeg_with(b"\xff\x00" * (len(fill) // 2))):
        with pytest.raises(images.ImageError) as err:
            images.prepare(bomb)
        assert str(err.value) == ("it is a JPEG with more than 65,536 bytes of padding (fill or stray bytes between "
                                  "its headers), which no ordinary JPEG has; save it again as an ordinary JPEG or as "
                                  "a PNG")
    assert images.MAX_JPEG_PADDING == 65_536


def test_a_jpeg_of_countless_segments_or_huge_tables_is_refused_before_pillow_reads_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    never_open(monkeypatch)
    with pytest.raises(images.ImageError) as err:
        images.prepare(jpeg_with(segment(0xFFE1) * 2_600_000))  # 2.6 million empty APP1s: 3.0 s in Pillow
    assert str(err.value) == ("it is a JPEG with more than 1,000 header segments (tables, metadata or comments) "
                              "before its picture data, which no ordinary JPEG has; save it again as an ordinary "
                              "JPEG or as a PNG")
    frames = segment(0xFFC0, b"\x08\x00\x30\x00\x40\x03" + b"\x01\x11\x00" * 21_800)  # 21,800 components
    with pytest.raises(images.ImageError, match="more than 65,536 bytes of frame and quantization tables"):
        images.prepare(jpeg_with(frames * 2))
    tables = segment(0xFFDB, (b"\x00" + bytes(range(1, 65))) * 1_008)  # 1,008 quantization tables
    with pytest.raises(images.ImageError, match="more than 65,536 bytes of frame and quantization tables"):
        images.prepare(jpeg_with(tables * 2))


def test_a_png_of_countless_chunks_is_refused_before_pillow_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    never_open(monkeypatch)
    for where in ("before", "after"):  # the picture data: Pillow reads every chunk, 2.3 s for these
        png = samples.encode(samples.gradient(), "PNG")
        empty = chunk(b"prIv") * 870_000
        bomb = png_with(empty) if where == "before" else png[:-12] + empty + png[-12:]  # IEND is 12 bytes
        with pytest.raises(images.ImageError) as err:
            images.prepare(bomb)
        assert str(err.value) == ("it is a PNG of more than 20,000 chunks (pieces of picture data or metadata), "
                                  "which no ordinary PNG has; save it again as an ordinary PNG")


def test_a_png_of_many_compressed_metadata_chunks_is_refused_before_pillow_inflates_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    inflating = zlib.compress(b"\xff" * (2**20 - 1), 9)  # 1 kB to 1 MB: 10 MB of these took Pillow 22 s
    never_open(monkeypatch)
    for packed in (chunk(b"iCCP", b"icc\x00\x00" + inflating), chunk(b"zTXt", b"\x00\x00" + inflating)):
        with pytest.raises(images.ImageError) as err:
            images.prepare(png_with(packed * (images.MAX_PNG_PACKED_CHUNKS + 1)))
        assert str(err.value) == ("it is a PNG with more than 16 compressed metadata chunks (colour profiles or "
                                  "texts), which no ordinary PNG has; save it again as an ordinary PNG, without its "
                                  "metadata")


def test_a_gif_of_countless_tiny_blocks_or_stray_bytes_is_refused_before_pillow_reads_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    never_open(monkeypatch)
    message = ("it is a GIF whose metadata before its first picture comes in more than 10,000 pieces (blocks or "
               "stray bytes), which no ordinary GIF has; save it again as an ordinary GIF or as a PNG")
    for inserted in (comment(b"x", 5_000_000),  # a 10 MB comment of 1-byte sub-blocks: 1.1 s in Pillow
                     b"\x00" * (images.MAX_BYTES - 10_000),  # stray bytes, which Pillow skips one at a time
                     b"!\xfe\x00" * 3_000_000):  # empty comments
        with pytest.raises(images.ImageError) as err:
            images.prepare(gif_with(inserted))
        assert str(err.value) == message


def test_a_file_at_each_header_bound_opens_and_one_piece_more_is_refused() -> None:
    note = chunk(b"zTXt", b"note\x00\x00" + zlib.compress(b"a few words"))
    made: list[tuple[Callable[[int], bytes], int, str]] = [
        (lambda n: jpeg_with(b"\xff" * n), images.MAX_JPEG_PADDING, "bytes of padding"),
        # the JPEG's own 8 segments before its scan: APP0, 2 DQT, SOF0, 4 DHT
        (lambda n: jpeg_with(segment(0xFFFE) * (n - 8)), images.MAX_JPEG_SEGMENTS, "header segments"),
        (lambda n: png_with(chunk(b"prIv") * (n - 3)), images.MAX_PNG_CHUNKS, "chunks"),  # IHDR, IDAT, IEND
        (lambda n: png_with(note * n), images.MAX_PNG_PACKED_CHUNKS, "compressed metadata chunks"),
        (lambda n: gif_with(comment(b"x", n - 1)), images.MAX_GIF_PIECES, "pieces"),  # the extension is one
    ]
    for make, bound, words in made:
        assert images.prepare(make(bound)).shape == (32, 32, 3)
        with pytest.raises(images.ImageError, match=words):
            images.prepare(make(bound + 1))


def test_ordinary_metadata_and_long_animations_pass_the_header_checks() -> None:
    profile = bytes(300_000)  # a large colour profile: five APP2 segments in a JPEG
    frames = [Image.new("RGB", (40, 30), (i % 256, 100, 200 - i % 200)) for i in range(300)]
    gif = samples.encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0,
                         comment=b"made by hand")
    info = PngImagePlugin.PngInfo()
    for key in ("Title", "Author", "Software", "Comment"):
        info.add_text(key, f"a screenshot's {key.lower()}", zip=key == "Comment")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta/>" * 400, zip=True)
    ordinary = [
        samples.encode(samples.gradient(640, 480), "JPEG", icc_profile=profile, exif=Image.Exif(), progressive=True),
        samples.encode(samples.gradient(640, 480), "PNG", pnginfo=info, icc_profile=profile),
        samples.encode(samples.gradient(640, 480), "PNG", optimize=False, compress_level=0),  # many IDAT chunks
        gif, samples.multi_picture_jpeg(), samples.exif_rotated_jpeg(), *samples.good().values(),
    ]
    assert Image.open(io.BytesIO(gif)).n_frames == 300  # only the first is read
    for content in ordinary:
        assert images.prepare(content).shape == (32, 32, 3)


def test_a_signature_with_no_picture_after_it_is_called_damaged_not_another_format() -> None:
    for content in (b"\xff\xd8\xff" + b"\xff" * 100, b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, b"GIF89a" + bytes(100)):
        with pytest.raises(images.ImageError, match=r"damaged or truncated \(no (JPEG|PNG|GIF) picture found"):
            images.prepare(content)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a"]), st.binary(max_size=2048))
def test_random_bytes_after_a_signature_raise_only_image_error(signature: bytes, blob: bytes) -> None:
    try:
        assert images.prepare(signature + blob).shape == (32, 32, 3)
    except images.ImageError:
        pass


def test_a_large_picture_is_shrunk_to_what_the_preview_and_the_view_need() -> None:
    assert images.reduction(8000, 5000) == 13 and images.reduction(640, 480) == 1
    assert images.reduction(10000, 20) == 1  # a strip keeps its short side: the model sees its middle square
    for w, h in [(8000, 5000), (5000, 8000), (3000, 500), (40000, 1000), (700, 700)]:
        f = images.reduction(w, h)
        assert min(w, h) // f >= 128 and max(w, h) // f >= 600  # 4x the 32x32 view and the 150-pixel preview
    big = samples.gradient(3000, 2000)
    img = images.open_image(samples.encode(big, "PNG"))
    assert img.size == (600, 400)
    full = np.asarray(images.model_view(big), int)  # what the view was when made from the whole picture
    assert np.abs(np.asarray(images.model_view(img), int) - full).max() <= 2


# Measured in a fresh process, whose peak memory is its own: this one's may already be above what a picture costs.
# Its peak is VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child's starts at this
# process's peak (measured: 312 MB in a child of a 312 MB parent, whose VmHWM was 9 MB).
MEASURE = """
import json, sys, time
from deconv import images

def peak_mb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024

images.prepare(sys.argv[2])  # Pillow's PNG reader loaded before measuring
content = open(sys.argv[1], "rb").read()
before, start = peak_mb(), time.perf_counter()
picture = images.Pictures().add("big.png", content)
print(json.dumps({"grown_mb": peak_mb() - before, "seconds": time.perf_counter() - start,
                  "row": picture.view[16, :, 0].tolist()}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from Linux's /proc")
def test_a_huge_sixteen_bit_png_costs_little_memory(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(samples.sixteen_bit_png(8000, 5000))  # 89 kB; 80 MB decoded
    (tmp_path / "small.png").write_bytes(samples.good()["photo.png"])
    done = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "big.png"), str(tmp_path / "small.png")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)
    print(f"16-bit 8000x5000 PNG: +{measured['grown_mb']:.0f} MB peak, {measured['seconds']:.2f} s")
    # 1 GB and 4.6 s when it was converted whole to float64; now about the 80 MB of the decoded picture
    assert measured["grown_mb"] < 300, f"peak memory grew by {measured['grown_mb']:.0f} MB"
    row = measured["row"]  # the middle of the gradient, kept in 8 bits: darker at the left, brighter at the right
    assert row == sorted(row) and 40 < row[0] < row[-1] < 215


def test_exif_orientation_is_applied() -> None:
    x = images.prepare(samples.exif_rotated_jpeg()).astype(int)
    top, bottom = x[:8].mean((0, 1)), x[-8:].mean((0, 1))
    assert top[0] > 200 and top[2] < 60  # red on top: the model sees the picture upright
    assert bottom[2] > 200 and bottom[0] < 60


def test_transparency_is_white_and_animation_uses_the_first_frame() -> None:
    rgba = images.prepare(samples.good()["rgba.png"])
    assert (rgba[0, 0] == 255).all() and rgba[16, 16].tolist() == [255, 0, 0]
    pal = images.prepare(samples.good()["palette.png"])
    assert (pal[0, 0] == 255).all() and pal[16, 16][0] > 200 and pal[16, 16][1] < 50
    gif = images.prepare(samples.animated_gif())
    assert gif[16, 16, 1] > 150 and gif[16, 16, 0] < 50  # green, not magenta


def test_sixteen_bit_grey_keeps_its_range() -> None:
    x = images.prepare(samples.good()["grey16.png"]).astype(int)
    assert x.min() < 40 and x.max() > 200 and (x[..., 0] == x[..., 1]).all()


def test_centre_crop_keeps_the_middle_of_a_wide_image() -> None:
    img = Image.new("RGB", (300, 100), "black")
    img.paste((255, 255, 255), (100, 0, 200, 100))
    view = images.model_view(img)
    assert view.size == (32, 32) and np.asarray(view).mean() > 240


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_image_error(blob: bytes) -> None:
    try:
        assert images.prepare(blob).shape == (32, 32, 3)
    except images.ImageError:
        pass


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300), st.integers(1, 300), st.sampled_from(["RGB", "L", "RGBA", "P", "CMYK", "1", "I;16"]),
       st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"]), st.data())
def test_random_valid_images_classify_or_raise_image_error(w: int, h: int, mode: str, fmt: str, data: st.DataObject) -> None:
    seed = data.draw(st.integers(0, 2**16))
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB").convert(mode) if mode != "I;16" else Image.fromarray(arr[..., 0].astype(np.uint16) * 200)
    try:
        blob = samples.encode(img, fmt)
    except (OSError, ValueError, KeyError):
        return  # this format cannot store this mode
    try:
        assert images.prepare(blob).shape == (32, 32, 3)
    except images.ImageError:
        pass


def png(colour: tuple[int, int, int]) -> bytes:
    return samples.encode(Image.new("RGB", (40, 30), colour), "PNG")


def test_pictures_keep_a_preview_and_the_view_not_the_file() -> None:
    pictures = images.Pictures()
    picture = pictures.add("photo.png", samples.good()["photo.png"])
    assert list(pictures) == [picture] and picture.number == 0 and picture.name == "photo.png"
    assert picture.view.shape == (32, 32, 3) and picture.view.dtype == np.uint8
    assert picture.preview.dtype == np.uint8 and max(picture.preview.shape[:2]) <= 150
    assert not any(isinstance(v, bytes) for v in vars(picture).values())
    assert pictures.views().shape == (1, 32, 32, 3)


def test_the_same_file_is_kept_once_and_moves_to_the_newest_place() -> None:
    pictures = images.Pictures()
    first = pictures.add("red.png", png((255, 0, 0)))
    pictures.add("blue.png", png((0, 0, 255)))
    assert pictures.add("red.png", png((255, 0, 0))) is first
    assert [p.name for p in pictures] == ["blue.png", "red.png"] and pictures.added == 2
    pictures.add("copy of red.png", png((255, 0, 0)))  # the same bytes under another name: the visitor's choice
    assert len(pictures) == 3


def test_pictures_keep_only_the_newest_up_to_the_limit() -> None:
    pictures = images.Pictures(limit=3)
    for i in range(5):
        pictures.add(f"{i}.png", png((i * 40, 0, 0)))
    assert [p.name for p in pictures] == ["2.png", "3.png", "4.png"]
    assert [p.number for p in pictures] == [2, 3, 4]  # numbers are never reused: stable widget keys
    assert images.Pictures().limit == images.MAX_PICTURES == 20
    with pytest.raises(ValueError):
        images.Pictures(limit=0)


def decodes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The contents images.open_image is asked to decode from now on, in order."""
    asked: list[bytes] = []
    real = images.open_image

    def counted(content: bytes) -> Image.Image:
        asked.append(content)
        return real(content)

    monkeypatch.setattr(images, "open_image", counted)
    return asked


def test_the_same_bytes_are_decoded_once_whatever_their_name(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = decodes(monkeypatch)
    pictures = images.Pictures()
    first = pictures.add("red.png", png((255, 0, 0)))
    copy = pictures.add("copy of red.png", png((255, 0, 0)))
    assert copy is not first and copy.view is first.view and copy.preview is first.preview
    assert not copy.view.flags.writeable  # shared, so never changed in place
    pictures.upload([("notes.png", b"just some text"), ("notes again.png", b"just some text")])
    pictures.upload([("notes.png", b"just some text")])
    assert len(asked) == 2  # the red picture and the text, once each
    assert [why for _, why in pictures.problems] == ["it is not an image in a format taken here (" + TAKEN + ")"]


def test_an_upload_reads_twenty_files_and_counts_the_ones_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = decodes(monkeypatch)
    pictures = images.Pictures()
    files = [(f"{i}.png", png((i * 10, 0, 0))) for i in range(images.MAX_FILES_PER_UPLOAD + 5)]
    pictures.upload(files)
    assert images.MAX_FILES_PER_UPLOAD == 20 and len(asked) == 20 and pictures.left_out == 5
    assert [p.name for p in pictures] == [f"{i}.png" for i in range(20)]
    pictures.upload(files[:1])
    assert pictures.left_out == 0 and len(asked) == 20  # counted per upload; a kept file is not decoded again
    pictures.upload(files)
    pictures.clear()
    assert pictures.left_out == 0 and not pictures.refused


def test_an_upload_reads_no_more_files_once_it_has_taken_its_cpu_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]  # the upload's CPU time: each decoded file costs 1/3.5 of its budget, so the fifth is not read
    real = images.open_image

    def costly(content: bytes) -> Image.Image:
        clock[0] += images.UPLOAD_SECONDS / 3.5
        return real(content)

    monkeypatch.setattr(images, "open_image", costly)
    monkeypatch.setattr(images.time, "thread_time", lambda: clock[0])
    pictures = images.Pictures()
    files = [(f"{i}.png", png((i * 20, 0, 0))) for i in range(8)]
    pictures.upload(files)
    assert [p.name for p in pictures] == ["0.png", "1.png", "2.png", "3.png"] and pictures.left_out == 0
    assert [name for name, _ in pictures.problems] == ["4.png", "5.png", "6.png", "7.png"]
    assert pictures.problems[0][1] == ("it was not read, as this upload had already taken its 1 s of reading time on "
                                       "the files before it; upload it again, with fewer or smaller files")
    pictures.upload(files[4:])  # not refused for good: uploaded again, they are read
    assert len(pictures) == 8 and not pictures.problems


def test_no_decoded_picture_or_file_outlives_an_upload() -> None:
    pictures = images.Pictures()
    pictures.upload([("big.png", samples.encode(samples.gradient(2400, 1800), "PNG")), ("bad.png", b"x" * 100)])
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, Image.Image) and o.width >= 600]
    kept = [v for p in pictures for v in vars(p).values()] + [v for v in vars(pictures).values()]
    assert not any(isinstance(v, (bytes, bytearray, Image.Image)) for v in kept)
    assert sum(p.preview.nbytes + p.view.nbytes for p in pictures) < 80_000  # a preview and the 32x32 view


def test_an_upload_keeps_the_good_files_and_says_why_the_others_failed() -> None:
    pictures = images.Pictures()
    pictures.upload([("photo.png", samples.good()["photo.png"]), ("notes.png", b"just some text")])
    assert [p.name for p in pictures] == ["photo.png"]
    assert [name for name, _ in pictures.problems] == ["notes.png"] and "not an image" in pictures.problems[0][1]
    pictures.upload([("red.png", png((255, 0, 0)))])
    assert pictures.problems == [] and len(pictures) == 2  # problems are the last upload's
    pictures.clear()
    assert len(pictures) == 0 and pictures.views().shape == (0, 32, 32, 3)
