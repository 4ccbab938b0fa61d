"""Any image becomes the 32x32 RGB view the model saw; bad files and other formats get a clear ImageError; a huge
picture costs little memory and a JPEG of many scans is refused before decoding; an upload is read up to twenty
files and up to its CPU time, and the same bytes are not decoded twice."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, JpegImagePlugin

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
