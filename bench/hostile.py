"""Hostile visitor: crafted run archives and pictures sent through a real browser to one `streamlit run app.py`.

`python bench/hostile.py [--port N] [--keep] [--max-rss-mib 8192] [--no-visitors]`

Measures and prints, never asserts. A small real run is trained with the CLI into a temporary runs folder
(DECONV_RUNS_DIR), the app is served from it (with a temporary TMPDIR of its own), and Chromium, one fresh
browser context per step, uploads crafted zips of that run on the Runs page (Import a run -> Zipped run
folder -> Import) and crafted pictures on the Classify page (Your pictures). Each step records the message
the page showed, whether an exception box appeared, the server's tracebacks, and how much the server's
peak memory (VmHWM) and its child processes' peaks grew. A server that stops answering its health check is
recorded as dead and started again (at most MAX_RESTARTS times); one whose process tree passes
--max-rss-mib is killed first, to spare the shared machine. At the end a fresh visitor opens Runs and
Classify and classifies a picture, and the runs folder and the temporary folders are searched for
leftovers. Writes bench/hostile_results.json. Then, unless --no-visitors, runs bench/hostile_visitors.py: the
attacks of visitors on a shared server at the protocol level (identity, cache clears, the queue, the quota,
costly imports, scan bombs, markup), each followed by an honest visitor.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import ANSI, EXCEPTION_LINE, FLAGS, MemorySampler  # noqa: E402
from deconv import samples  # noqa: E402

RESULTS = ROOT / "bench" / "hostile_results.json"
DATA = ROOT.parent / "shared" / "cifar10-subset"  # unless DECONV_DATA_DIR is set
SEED = "seed"  # the run trained for this bench, under the temporary runs folder
MARKDOWN_RUN = "markdown-message"  # the crafted run whose message is markdown, if it gets imported
RUN_FILES = ("model.keras", "config.json", "history.json", "meta.json", "report.json")  # deconv.runs' FILES and
# OPTIONAL_FILES, written out: this bench must not import the engine it attacks
STEP_TIMEOUT_MS = 120_000  # for one step's message: an import's weight check starts TensorFlow in a child (~15 s)
PAGE_TIMEOUT_MS = 60_000  # for one page load or click
SETTLE_S = 30  # after the message: how long the app may stay busy before the step is read as it is
MAX_RESTARTS = 3
MIB = 2**20
KERAS_TEMP = re.compile(r"^tmp[a-z0-9_]{8}$|keras|autograph")  # names tempfile (Keras' default) and TF give


# ---- the server and its memory


def proc_kib(pid: int, key: str) -> int:
    """One field of /proc/PID/status in kB (VmHWM: peak resident memory), 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class Watch(MemorySampler):
    """bench/load.py's sampler, also keeping every child's peak (VmHWM), and killing a runaway server tree."""

    def __init__(self, pid: int, limit: int) -> None:
        super().__init__(pid, every=0.2)
        self.limit, self.killed = limit, ""
        self.child_hwm: dict[int, int] = {}  # pid -> peak kB of every child process seen
        self.lock = threading.Lock()

    def mark(self) -> dict[int, int]:
        """The children's peaks so far, to compare with later (the app keeps a warm worker process)."""
        with self.lock:
            return dict(self.child_hwm)

    def since(self, mark: dict[int, int]) -> tuple[int, float]:
        """(child processes started since the mark, MiB: their peaks plus how much the older ones' peaks grew)."""
        now = self.mark()
        return sum(p not in mark for p in now), round(sum(now[p] - mark.get(p, 0) for p in now) / 1024, 1)

    def alive_hwm_mib(self) -> float:
        """The sum of the peaks of the children running now."""
        return round(sum(proc_kib(p, "VmHWM") for p in self.children()) / 1024, 1)

    def observe(self, kids: dict[int, int], tree: int) -> None:
        """Keep every child's peak; kill the whole tree once it holds more than the limit."""
        with self.lock:
            for pid in kids:
                self.child_hwm[pid] = max(self.child_hwm.get(pid, 0), proc_kib(pid, "VmHWM"))
        if tree > self.limit:
            self.killed = f"killed by the bench: its process tree held {tree / MIB:,.0f} MiB"
            for pid in [*kids, self.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.halt.set()  # nothing left to watch


class Server:
    """`streamlit run app.py` on 127.0.0.1, its output appended to a log file, watched by a Watch."""

    def __init__(self, env: dict[str, str], log: Path, port: int, limit: int) -> None:
        self.env, self.log_path, self.port, self.limit = env, log, port, limit
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.watch: Watch | None = None
        self.tree_peak = 0  # the largest process tree of every server started, in bytes

    def start(self) -> None:
        """Start it and wait until it is healthy (60 s at most)."""
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(self.port),
                 "--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while not self.healthy():
            if time.time() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("the server did not start:\n" + self.log_path.read_text()[-2000:])
            time.sleep(0.3)
        self.watch = Watch(self.proc.pid, self.limit)
        self.watch.start()

    def alive(self) -> bool:
        """Whether the server process still runs."""
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        """Whether the process runs and answers its health check within 5 s."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=5) as reply:
                return reply.status == 200
        except OSError:
            return False

    def hwm_mib(self) -> float:
        """The server process's peak resident memory so far (VmHWM)."""
        return round(proc_kib(self.proc.pid, "VmHWM") / 1024, 1) if self.proc else 0.0

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def tracebacks(self, since: int = 0) -> list[str]:
        """The exception line of every traceback the log got after byte `since`."""
        with open(self.log_path, "rb") as log:
            log.seek(since)
            text = ANSI.sub("", log.read().decode(errors="replace"))
        return [m.group(0).strip()[:300] if (m := EXCEPTION_LINE.search(chunk)) else "?"
                for chunk in text.split("Traceback (most recent call last)")[1:]]

    def stop(self) -> list[int]:
        """SIGTERM, SIGKILL after 30 s; then its children that outlived it are killed. Returns their pids."""
        if self.watch:
            self.watch.halt.set()
            self.watch.join()
            self.tree_peak = max(self.tree_peak, self.watch.peak_tree)
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        left = self.watch.survivors() if self.watch else []
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        return left


# ---- crafted run archives


Content = bytes | Callable[[IO[bytes]], None]  # a member's bytes, or a function writing them (for huge members)


def zipped(members: dict[str, Content], method: dict[str, int] | None = None) -> bytes:
    """A zip of the members, deflated unless `method` names another compression for one."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in members.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = (method or {}).get(name, zipfile.ZIP_DEFLATED)
            if callable(content):
                with archive.open(info, "w") as dst:  # streamed: the bench never holds the member whole
                    content(dst)
            else:
                archive.writestr(info, content)
    return out.getvalue()


def padded(head: bytes, pad: bytes, total: int) -> Callable[[IO[bytes]], None]:
    """A writer of `head` followed by `pad` repeated up to `total` bytes, 1 MiB at a time."""
    def write(dst: IO[bytes]) -> None:
        dst.write(head)
        chunk, left = pad * (MIB // len(pad)), total - len(head)
        while left > 0:
            dst.write(chunk[:left])
            left -= len(chunk)
    return write


def patched(blob: bytes, member: str, method: int | None = None, flags: int = 0, corrupt: bool = False) -> bytes:
    """The zip with one member's compression method or flag bits changed (local header and central directory
    alike), or its compressed data overwritten with an invalid deflate block."""
    data = bytearray(blob)
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        local, central = archive.getinfo(member).header_offset, archive.start_dir
    name = member.encode()
    headers = [(local, 6)]  # (header offset, offset of its flag bits; the method follows them)
    pos = central
    while data[pos:pos + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        if data[pos + 46:pos + 46 + name_len] == name:
            headers.append((pos, 8))
        pos += 46 + name_len + extra_len + comment_len
    for header, at in headers:
        bits, = struct.unpack_from("<H", data, header + at)
        struct.pack_into("<H", data, header + at, bits | flags)
        if method is not None:
            struct.pack_into("<H", data, header + at + 2, method)
    if corrupt:
        name_len, extra_len = struct.unpack_from("<HH", data, local + 26)
        body = local + 30 + name_len + extra_len
        data[body:body + 8] = b"\xff" * 8  # BFINAL=1, BTYPE=11: "invalid block type"
    return bytes(data)


def long_history(total: int) -> Callable[[IO[bytes]], None]:
    """A writer of a valid history.json of about `total` bytes: the same epoch over and over."""
    def write(dst: IO[bytes]) -> None:
        epoch = json.dumps({"epoch": 1, "loss": 2.0, "accuracy": 0.1, "val_loss": 2.0, "val_accuracy": 0.1,
                            "seconds": 1.0}).encode()
        chunk = b",".join([epoch] * (MIB // len(epoch))) + b","
        dst.write(b"[")
        for _ in range(-(-total // len(chunk))):
            dst.write(chunk)
        dst.write(epoch + b"]")
    return write


def huge_dense_config() -> bytes:
    """A Keras model config declaring Dense(16384) on a 16384-wide input: a 1 GiB kernel if anyone builds it."""
    def layer(cls: str, **config: Any) -> dict[str, Any]:
        return {"module": "keras.layers", "class_name": cls, "config": config, "registered_name": None}

    return json.dumps({
        "module": "keras", "class_name": "Sequential", "registered_name": None,
        "config": {"name": "huge", "trainable": True, "layers": [
            layer("InputLayer", batch_shape=[None, 16384], dtype="float32", name="wide"),
            {**layer("Dense", name="huge", units=16384, activation="linear", use_bias=True, trainable=True),
             "build_config": {"input_shape": [None, 16384]}},
            {**layer("Dense", name="classes", units=10, activation="softmax", use_bias=True, trainable=True),
             "build_config": {"input_shape": [None, 16384]}}]},
        "build_config": {"input_shape": [None, 16384]}, "compile_config": None}).encode()


def archives(seed: dict[str, bytes]) -> list[tuple[str, str, Callable[[], bytes]]]:
    """(step, file name, maker of the zip's bytes) for every crafted run archive, made one at a time."""
    with zipfile.ZipFile(io.BytesIO(seed["model.keras"])) as model:
        keras_files = {i.filename: model.read(i) for i in model.infolist()}
    meta = json.loads(seed["meta.json"])

    def run(**changed: Content) -> dict[str, Content]:
        return {**seed, **changed}

    def keras(**changed: Content) -> bytes:
        return zipped({**keras_files, **{k.replace("__", "."): v for k, v in changed.items()}})

    def meta_with(**fields: Any) -> bytes:
        return json.dumps({**meta, **fields}).encode()

    pads = {f"pad{i}.bin": padded(b"", b"\0", 100 * MIB) for i in range(10)}
    markdown = ["![x](http://example.invalid/x.png)", "[click](http://example.invalid)", "**bold**", "<b>b</b>",
                "cat", "deer", "dog", "frog", "horse", "ship"]
    return [
        ("1 huge Dense in model.keras", "huge-dense.zip",
         lambda: zipped(run(**{"model.keras": keras(config__json=huge_dense_config())}))),
        ("2 config.json + 512 MiB spaces", "padded-config.zip",
         lambda: zipped(run(**{"model.keras": keras(config__json=padded(keras_files["config.json"], b" ",
                                                                            512 * MIB))}))),
        ("3a model.keras bzip2", "bzip2.zip",
         lambda: zipped(run(), method={"model.keras": zipfile.ZIP_BZIP2})),
        ("3b meta.json method 99", "method99.zip",
         lambda: patched(zipped(run()), "meta.json", method=99)),
        ("4 meta.json encrypted flag", "encrypted.zip",
         lambda: patched(zipped(run()), "meta.json", flags=0x1)),
        ("5 corrupt deflate stream", "corrupt-deflate.zip",
         lambda: patched(zipped(run()), "meta.json", corrupt=True)),
        ("6 meta.json nested 100,000 deep", "nested.zip",
         lambda: zipped(run(**{"meta.json": b"[" * 100_000 + b"]" * 100_000}))),
        ("7 model.keras + 10x100 MiB pads", "padding-members.zip",
         lambda: zipped(run(**{"model.keras": zipped({**keras_files, **pads})}))),
        ("8a val_accuracy \"high\"", "val-high.zip",
         lambda: zipped(run(**{"meta.json": meta_with(val_accuracy="high")}))),
        ("8b saved_at year 9999", "year-9999.zip",
         lambda: zipped(run(**{"meta.json": meta_with(saved_at="9999-12-31T00:00:00+0000")}))),
        ("8c markdown message", f"{MARKDOWN_RUN}.zip",
         lambda: zipped(run(**{"meta.json": meta_with(
             message="![x](http://example.invalid/x.png) [click](http://example.invalid)")}))),
        ("8d markdown label_names", "markdown-labels.zip",
         lambda: zipped(run(**{"meta.json": meta_with(label_names=markdown)}))),
        ("9 15 MB history.json", "big-history.zip",
         lambda: zipped(run(**{"history.json": long_history(15_000_000)}))),
        ("10 truncated model.keras", "truncated.zip",
         lambda: zipped(run(**{"model.keras": seed["model.keras"][:len(seed["model.keras"]) // 2]}))),
    ]


# ---- crafted pictures


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, depth: int, rows: int, first: bytes, rest: bytes) -> bytes:
    """A greyscale PNG declaring width x height, whose first `rows` rows are `first` then `rest` (filter bytes
    included), compressed row by row; fewer rows than `height` make a truncated image."""
    packer = zlib.compressobj(9)
    idat = [packer.compress(first)] + [packer.compress(rest) for _ in range(rows - 1)] + [packer.flush()]
    header = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"".join(idat)) \
        + png_chunk(b"IEND", b"")


def pictures() -> list[tuple[str, list[tuple[str, bytes]]]]:
    """(step, files of one upload) for every crafted picture upload."""
    ramp = b"\0" + b"".join(struct.pack(">H", x * 65535 // 7999) for x in range(8000))  # filter None: a ramp
    big = png(8000, 5000, 16, 5000, ramp, b"\2" + b"\0" * 16000)  # filter Up: every row as the one above
    bomb = png(60000, 60000, 8, 16, b"\0" * 60001, b"\0" * 60001)
    many = [(f"many-{i:02d}.png", samples.encode(samples.gradient(64 + i, 48), "PNG")) for i in range(30)]
    return [("16-bit 8000x5000 PNG", [("big-16bit.png", big)]),
            ("PNG declaring 60000x60000", [("bomb.png", bomb)]),
            ("30 small files at once", many),
            ("TIFF named .png", [("tiff.png", samples.encode(samples.gradient(), "TIFF"))]),
            ("text named .jpg", [("notes.jpg", b"not a picture, just some words\n" * 20)])]


# ---- the browser


@dataclass
class Step:
    """What one hostile upload did."""

    step: str
    files: str
    upload_bytes: int
    outcome: str = "not run"  # imported, refused, classified, ... or timeout, server died
    message: str = ""  # the success or error text the page showed
    exception_box: bool = False
    exception_text: str = ""
    other_errors: list[str] = field(default_factory=list)  # error messages elsewhere on the page
    results_shown: int | None = None  # Classify: pictures with a result
    seconds: float = 0.0
    server_hwm_before_mib: float = 0.0
    server_hwm_after_mib: float | None = 0.0  # None: the server died during the step
    children: int = 0  # child processes the server started during the step
    children_growth_mib: float = 0.0  # the new children's peaks plus the growth of the older ones' peaks
    hidden_in_runs_after: list[str] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)


def texts(locator: Any) -> list[str]:
    return [t.strip()[:400] for t in locator.all_inner_texts()]


def settle(page: Any) -> None:
    """Wait until the app has finished its script run (no running indicator for 1 s), at most SETTLE_S."""
    deadline, idle = time.monotonic() + SETTLE_S, 0
    while time.monotonic() < deadline and idle < 4:
        idle = idle + 1 if page.get_by_test_id("stStatusWidget").filter(has_text="Running").count() == 0 else 0
        time.sleep(0.25)


class ServerGone(Exception):
    """The server process ended while a step waited for the page."""


def until(locator: Any, alive: Callable[[], bool], timeout_ms: int = STEP_TIMEOUT_MS) -> None:
    """locator.wait_for, giving up at once (ServerGone) when the server process ends."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        try:
            locator.wait_for(timeout=2000)
            return
        except PlaywrightTimeout:
            if not alive():
                raise ServerGone() from None
            if time.monotonic() > deadline:
                raise


def ready(page: Any, wanted: Any, whole: bool = True) -> bool:
    """Wait for `wanted` or an exception box (and, if `whole`, for the rest of the page); whether `wanted` came
    without one. An upload may start before the page has finished: the step reads the page once it settled."""
    wanted.or_(page.get_by_test_id("stException")).first.wait_for()
    if whole:
        settle(page)
    return page.get_by_test_id("stException").count() == 0 and wanted.count() > 0


def import_archive(page: Any, url: str, name: str, blob: bytes, step: Step, alive: Callable[[], bool]) -> None:
    """Runs page: open Import a run, upload the zip, press Import, read the outcome."""
    page.goto(f"{url}/runs")
    if not ready(page, page.get_by_text("Import a run", exact=True), whole=False):
        step.outcome = "page broken before the upload"
        return
    page.get_by_text("Import a run", exact=True).click()
    box = page.get_by_test_id("stExpander").filter(has_text="Zipped run folder")
    box.locator('input[type="file"]').set_input_files({"name": name, "mimeType": "application/zip", "buffer": blob})
    box.get_by_role("button", name="Import").last.click()
    said = box.get_by_test_id("stAlertContentSuccess").or_(box.get_by_test_id("stAlertContentError"))
    until(said.or_(page.get_by_test_id("stException")).or_(box.get_by_test_id("stFileChipIconError")).first, alive)
    settle(page)
    message = texts(said)
    step.message = " | ".join(message) or " | ".join(texts(box.get_by_test_id("stFileChips")))
    step.outcome = ("imported" if message and message[0].startswith("Imported") else
                    "refused" if message else "no message")
    step.other_errors = [t for t in texts(page.get_by_test_id("stAlertContentError")) if t not in message]


def classify_upload(page: Any, url: str, files: list[tuple[str, bytes]], step: Step,
                    alive: Callable[[], bool]) -> None:
    """Classify page: upload the files to Your pictures, read the errors and count the results."""
    page.goto(f"{url}/classify?model={SEED}")
    mine = page.get_by_role("tabpanel", name="Your pictures")
    if not ready(page, mine.get_by_test_id("stFileUploader"), whole=False):
        step.outcome = "page broken before the upload"
        return
    page.locator('input[type="file"]').set_input_files(
        [{"name": n, "mimeType": "image/png" if n.endswith(".png") else "image/jpeg", "buffer": b} for n, b in files])
    shown = mine.get_by_text("what the model sees (32x32)")
    until(shown.or_(mine.get_by_test_id("stAlertContentError")).or_(page.get_by_test_id("stException")).first, alive)
    settle(page)
    errors = texts(mine.get_by_test_id("stAlertContentError"))
    step.message = " | ".join(errors + texts(mine.get_by_test_id("stAlertContentWarning")))[:1500]
    step.results_shown = shown.count()
    step.outcome = f"{step.results_shown} classified, {len(errors)} refused"


def fresh_visitor(browser: Any, url: str, runs: Path) -> dict[str, Any]:
    """A new browser context opens Runs and Classify and classifies one ordinary picture."""
    from playwright.sync_api import Error as PlaywrightError

    seen: dict[str, Any] = {"runs_page_ok": False, "classify_page_ok": False, "classify_result": False,
                            "exception_boxes": [], "error_messages": [], "problem": ""}
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        page.goto(f"{url}/runs")
        seen["runs_page_ok"] = ready(page, page.get_by_text("Import a run", exact=True))
        seen["exception_boxes"] += texts(page.get_by_test_id("stException"))
        seen["error_messages"] += texts(page.get_by_test_id("stAlertContentError"))
        if (runs / MARKDOWN_RUN).is_dir():  # imported: show it under "One run"
            pick = page.get_by_role("combobox", name="Run", exact=True)
            pick.click()
            pick.fill(MARKDOWN_RUN)
            page.get_by_role("option", name=MARKDOWN_RUN, exact=True).click()
            settle(page)
            seen["markdown_run_shown"] = page.get_by_text("example.invalid").count() > 0
        seen["links_or_images_to_example_invalid"] = page.locator(
            '[href*="example.invalid"], [src*="example.invalid"]').count()
        page.goto(f"{url}/classify")
        mine = page.get_by_role("tabpanel", name="Your pictures")
        seen["classify_page_ok"] = ready(page, mine.get_by_test_id("stFileUploader"))
        seen["exception_boxes"] += texts(page.get_by_test_id("stException"))
        if not seen["classify_page_ok"]:
            return seen
        page.locator('input[type="file"]').set_input_files(
            {"name": "ordinary.png", "mimeType": "image/png", "buffer": samples.encode(samples.gradient(), "PNG")})
        mine.get_by_text("All ten classes").or_(page.get_by_test_id("stException")).or_(
            mine.get_by_test_id("stAlertContentError")).first.wait_for(timeout=STEP_TIMEOUT_MS)
        settle(page)
        seen["classify_result"] = mine.get_by_text("All ten classes").count() > 0
        seen["exception_boxes"] += texts(page.get_by_test_id("stException"))
        seen["error_messages"] += texts(mine.get_by_test_id("stAlertContentError"))
    except PlaywrightError as e:  # a timeout or a closed page: recorded, the report goes on
        seen["problem"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    finally:
        context.close()
    return seen


# ---- the runs folder and the temporary folders


def folder_state(runs: Path) -> dict[str, Any]:
    """The runs folder's size, its runs, its hidden folders (but .jobs) and files that are not a run's."""
    size, stray = 0, []
    for folder, _, files in os.walk(runs):
        for file in files:
            path = Path(folder, file)
            size += path.lstat().st_size
            rel = path.relative_to(runs)
            if len(rel.parts) != 2 or rel.parts[1] not in RUN_FILES:
                stray.append(str(rel))
    entries = sorted(p.name for p in runs.iterdir())
    return {"bytes": size, "runs": [e for e in entries if not e.startswith(".")],
            "hidden": [e for e in entries if e.startswith(".") and e != ".jobs"],
            "stray_files": [s for s in stray if not s.startswith(".jobs/")][:50]}


def listing(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


# ---- the story: seed, serve, attack, check, report


def train_seed(env: dict[str, str], runs: Path) -> dict[str, bytes]:
    """Train the small real run every archive is made from; its files' bytes."""
    done = subprocess.run([sys.executable, "-m", "deconv", "train", "--widths", "8", "--train-size", "500",
                           "--val-size", "200", "--epochs", "1", "--out", str(runs / SEED)], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"training the seed run failed (exit code {done.returncode}): {done.stderr[-1500:]}")
    return {f: (runs / SEED / f).read_bytes() for f in RUN_FILES if (runs / SEED / f).is_file()}


def run_step(browser: Any, server: Server, step: Step, action: Callable[[Any], None], runs: Path,
             restarts: list[str]) -> None:
    """One upload in a fresh browser context, measured; a server that died is recorded, and started again (and
    warmed up) before the next step, MAX_RESTARTS times at most."""
    from playwright.sync_api import Error as PlaywrightError

    if not server.healthy():
        if len(restarts) >= MAX_RESTARTS:
            step.outcome = "skipped: server down"
            return
        restarts.append(step.step)
        print(f"  restarting the server before {step.step}", file=sys.stderr)
        server.stop()
        server.start()
        fresh_visitor(browser, server.url, runs)  # TensorFlow and the seed model load again, outside the step
    mark = server.watch.mark()
    step.server_hwm_before_mib, log_at, began = server.hwm_mib(), server.log_size(), time.monotonic()
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        action(page)
    except ServerGone:
        step.outcome = "server gone while waiting"
    except PlaywrightError as e:
        step.outcome = "timeout" if "Timeout" in type(e).__name__ else "browser error"
        step.message = step.message or str(e).splitlines()[0][:300]
    try:
        boxes = texts(page.get_by_test_id("stException"))
        step.exception_box, step.exception_text = bool(boxes), " | ".join(boxes)[:1000]
        context.close()
    except PlaywrightError as e:  # the page or the browser is gone: there is nothing more to read
        step.exception_text = step.exception_text or f"page unreadable: {str(e).splitlines()[0][:200]}"
    step.seconds = round(time.monotonic() - began, 1)
    step.server_hwm_after_mib = server.hwm_mib() if server.alive() else None
    step.children, step.children_growth_mib = server.watch.since(mark)
    step.tracebacks = server.tracebacks(log_at)
    step.hidden_in_runs_after = folder_state(runs)["hidden"]
    if not server.healthy():
        if server.proc.poll() is None:
            why = "no answer to the health check"
        else:
            why = server.watch.killed or f"exit code {server.proc.poll()}"
        step.outcome = f"server died ({why}) after: {step.outcome}"
        print(f"  {step.step}: server died ({why})", file=sys.stderr)


def row(s: Step) -> str:
    delta = "died" if s.server_hwm_after_mib is None else f"{s.server_hwm_after_mib - s.server_hwm_before_mib:+.0f}"
    said = (s.message or "").replace("|", "/").replace("\n", " ")
    return (f"| {s.step} | {s.upload_bytes / 1024:,.0f} kB | {s.outcome} | {said[:90]} | "
            f"{'YES' if s.exception_box else ''} | {delta} | {s.children_growth_mib:+,.0f} | "
            f"{len(s.tracebacks) or ''} | {s.seconds} |")


def report(results: dict[str, Any]) -> str:
    lines = ["| step | upload | outcome | message | exception box | server VmHWM MiB | children VmHWM MiB | "
             "tracebacks | s |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [row(Step(**s)) for s in results["steps"]]
    m, v = results["memory"], results["fresh_visitor"]
    before, after = results["runs_folder"]["before"] or {}, results["runs_folder"]["after"] or {}
    lines += ["",
              f"server VmHWM: {m['server_hwm_baseline_mib']} MiB after warm-up -> {m['server_hwm_end_mib']} MiB "
              f"at the end (+{m['server_hwm_growth_mib']} MiB); its running children's VmHWM: "
              f"{m['children_hwm_baseline_mib']} -> {m['children_hwm_end_mib']} MiB; {m['children_started']} child "
              f"processes started, their peaks (plus the older ones' growth) summing to "
              f"{m['children_growth_sum_mib']} MiB, at most {m['children_growth_largest_step_mib']} MiB in one step; "
              f"whole tree peak RSS {m['tree_peak_rss_mib']} MiB",
              f"runs folder: {before.get('bytes', 0) / MIB:.2f} MiB, {len(before.get('runs', []))} run(s) -> "
              f"{after.get('bytes', 0) / MIB:.2f} MiB, {len(after.get('runs', []))} run(s); hidden leftovers "
              f"{after.get('hidden') or 'none'}; stray files {after.get('stray_files') or 'none'}",
              f"temporary files: the server's own TMPDIR holds {len(results['temp']['server_tmpdir_new'])} new "
              f"entries; {results['temp']['system_tmp']} got {len(results['temp']['system_tmp_new_keras_like'])} "
              f"new Keras/TensorFlow-like entries (other users of the machine may have made them)",
              f"server deaths: {results['server_deaths'] or 'none'}; processes left after stop: "
              f"{results['processes_left_after_stop']}; tracebacks in the server log: "
              f"{results['server_tracebacks_total']}" + (f"; STOPPED EARLY: {results['error']}" if results["error"]
                                                         else ""),
              f"fresh visitor: Runs page {'ok' if v.get('runs_page_ok') else 'NOT ok'}, Classify page "
              f"{'ok' if v.get('classify_page_ok') else 'NOT ok'}, a picture classified: "
              f"{'yes' if v.get('classify_result') else 'NO'}"
              + (f"; {MARKDOWN_RUN}'s message shown as text: {v['markdown_run_shown']}, links or images to "
                 f"example.invalid: {v.get('links_or_images_to_example_invalid')}" if "markdown_run_shown" in v else "")
              + (f"; exception boxes: {v['exception_boxes']}" if v.get("exception_boxes") else "")
              + (f"; problem: {v['problem']}" if v.get("problem") else "")]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="the server's port (default: a free one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (runs, server log)")
    parser.add_argument("--max-rss-mib", type=int, default=8192,
                        help="kill the server when its process tree holds more than this")
    parser.add_argument("--no-visitors", action="store_true",
                        help="skip bench/hostile_visitors.py (the protocol-level attacks on a shared server)")
    args = parser.parse_args()
    if not args.port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            args.port = s.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="deconv-hostile-"))
    runs, server_tmp = tmp / "runs", tmp / "tmp"
    server_tmp.mkdir()
    data = Path(os.environ.get("DECONV_DATA_DIR") or DATA)
    env = {**os.environ, "DECONV_DATA_DIR": str(data), "DECONV_RUNS_DIR": str(runs), "TMPDIR": str(server_tmp),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    system_tmp = Path(tempfile.gettempdir())
    system_before = listing(system_tmp)
    server = Server(env, tmp / "streamlit.log", args.port, args.max_rss_mib * MIB)
    steps: list[Step] = []
    restarts: list[str] = []
    seen: dict[str, Any] = {"warm_up": {}, "fresh_visitor": {"problem": "not reached"}, "baseline": 0.0,
                            "end_hwm": 0.0, "children_base": 0.0, "children_end": 0.0, "before": {},
                            "server_tmp_before": set(), "error": ""}
    try:
        print(f"training the seed run (data: {data}) in {tmp}", file=sys.stderr)
        seed = train_seed(env, runs)
        server.start()
        attack(server, seed, runs, server_tmp, steps, restarts, seen)
    except Exception as e:  # the report is written whatever went wrong; the error is part of it
        seen["error"] = f"{type(e).__name__}: {str(e)[-1500:]}"
        print(f"stopped early: {seen['error']}", file=sys.stderr)
    finally:
        left = server.stop()
        results = {
            "command": f"python bench/hostile.py --port {args.port}" + (" --keep" if args.keep else ""),
            "cpus": os.cpu_count(), "data": str(data), "error": seen["error"], "warm_up": seen["warm_up"],
            "memory": {"server_hwm_baseline_mib": seen["baseline"], "server_hwm_end_mib": seen["end_hwm"],
                       "server_hwm_growth_mib": round(seen["end_hwm"] - seen["baseline"], 1),
                       "note": "VmHWM of the last server started: growth means little across a restart"
                       if restarts else "VmHWM of the one server, after warm-up and at the end",
                       "children_hwm_baseline_mib": seen["children_base"], "children_hwm_end_mib": seen["children_end"],
                       "children_started": sum(s.children for s in steps),
                       "children_growth_sum_mib": round(sum(s.children_growth_mib for s in steps), 1),
                       "children_growth_largest_step_mib": max((s.children_growth_mib for s in steps), default=0),
                       "tree_peak_rss_mib": round(server.tree_peak / MIB)},
            "runs_folder": {"before": seen["before"], "after": folder_state(runs) if runs.is_dir() else {}},
            "temp": {"server_tmpdir": str(server_tmp),
                     "server_tmpdir_new": sorted(listing(server_tmp) - seen["server_tmp_before"])[:50],
                     "system_tmp": str(system_tmp),
                     "system_tmp_new_keras_like": sorted(n for n in listing(system_tmp) - system_before
                                                         if KERAS_TEMP.search(n))[:50]},
            "server_deaths": [s.step for s in steps if "server died" in s.outcome],
            "restarts": len(restarts), "processes_left_after_stop": len(left),
            "server_tracebacks_total": len(server.tracebacks()) if server.log_path.exists() else 0,
            "fresh_visitor": seen["fresh_visitor"], "steps": [asdict(s) for s in steps],
        }
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(report(results))
    print(json.dumps(results, indent=2))
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")
    if not args.no_visitors:
        subprocess.run([sys.executable, str(ROOT / "bench" / "hostile_visitors.py")], cwd=ROOT, check=False)


def attack(server: Server, seed: dict[str, bytes], runs: Path, server_tmp: Path, steps: list[Step],
           restarts: list[str], seen: dict[str, Any]) -> None:
    """Warm the server up, send every crafted archive and picture, then let a fresh visitor in."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=FLAGS)
        print(f"warming up {server.url}: TensorFlow and the seed model load once", file=sys.stderr)
        seen["warm_up"] = fresh_visitor(browser, server.url, runs)
        seen["baseline"], seen["children_base"] = server.hwm_mib(), server.watch.alive_hwm_mib()
        seen["before"] = folder_state(runs)
        seen["server_tmp_before"] = listing(server_tmp)
        for name, file, make in archives(seed):
            blob = make()
            step = Step(name, file, len(blob))
            print(f"  {name}: {len(blob):,} bytes", file=sys.stderr)
            run_step(browser, server, step,
                     lambda page: import_archive(page, server.url, file, blob, step, server.alive), runs, restarts)
            steps.append(step)
        for name, files in pictures():
            step = Step(name, ", ".join(n for n, _ in files[:3]) + (", ..." if len(files) > 3 else ""),
                        sum(len(b) for _, b in files))
            print(f"  {name}: {step.upload_bytes:,} bytes", file=sys.stderr)
            run_step(browser, server, step, lambda page: classify_upload(page, server.url, files, step, server.alive),
                     runs, restarts)
            steps.append(step)
        print("a fresh visitor opens Runs and Classify", file=sys.stderr)
        seen["fresh_visitor"] = (fresh_visitor(browser, server.url, runs) if server.healthy()
                                 else {"problem": "server down"})
        seen["end_hwm"], seen["children_end"] = server.hwm_mib(), server.watch.alive_hwm_mib()
        browser.close()


if __name__ == "__main__":
    main()
