"""Load test: browser sessions against one `streamlit run app.py` with one training slot.

`python bench/load.py [--seconds 120] [--clients-classify 6] [--clients-train 2] [--server-log FILE]`

Measures and prints, never asserts. One Chromium, one browser context per client, all arriving at
once. Classify clients upload a picture, wait for its top-5 chart, remove it and go again until
--seconds are up; train clients press Train together with DECONV_MAX_JOBS=1, so one trains and the
others wait their turn. The server's memory (its own and its child processes') is sampled every
0.5 s from /proc. An error is an exception box, an error message, a page error, a Playwright
timeout or a training that ends any other way than finished; a client that meets one reloads its
page and goes on. Writes bench/load_results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deconv import samples  # noqa: E402
from deconv.samples import write_cifar  # noqa: E402

RESULTS = ROOT / "bench" / "load_results.json"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
# What each train client asks for, in the Train page's URL: 1,000 training and 100 validation
# images, 3 epochs, about 20-40 s on an idle machine; the page's estimate line confirms it.
TRAIN_QUERY = "train_size=1000&val_size=100&epochs=3"
TRAIN_SUMMARY = "3 epochs of 1,000 images"
MIME = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
TIMEOUT_MS = 90_000  # for one page load, one upload's chart, one click
TRAIN_TIMEOUT_S = 900.0  # for one training, from the click to its confusion matrix
ENDED = re.compile("cancelled|stopped", re.IGNORECASE)  # the message of a training that did not finish
ANSI = re.compile(r"\x1b\[[0-9;]*m")
EXCEPTION_LINE = re.compile(r"^\w+(?:\.\w+)*(?:Error|Exception|Exit|Interrupt)\b.*$", re.MULTILINE)


@dataclass
class Trainer:
    """What one train client saw: seconds since its click on Train."""

    client: str
    queued: float | None = None  # "Waiting for a training slot" shown
    running: float | None = None  # the progress bar shown
    finished: float | None = None  # the confusion matrix shown
    outcome: str = "not started"
    clicked_at: float | None = None  # seconds since the clients were launched


@dataclass
class Stats:
    """Everything the clients measured; times are seconds since the clients were launched."""

    start: float = field(default_factory=time.monotonic)
    uploads: list[tuple[float, float]] = field(default_factory=list)  # (sent at, latency)
    trainers: list[Trainer] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    ready_at: float | None = None  # when every client's page was open

    def now(self) -> float:
        """Seconds since the clients were launched."""
        return time.monotonic() - self.start

    def error(self, client: str, kind: str, detail: str) -> None:
        """Record one error; say so at once the first time one like it happens."""
        first = f"{kind}: {detail.splitlines()[0][:200] if detail else ''}"
        if not any(f"{e['kind']}: {e['detail'].splitlines()[0][:200] if e['detail'] else ''}" == first
                   for e in self.errors):
            print(f"  {self.now():.0f} s, {client}: {first}", file=sys.stderr)
        self.errors.append({"t": round(self.now(), 1), "client": client, "kind": kind, "detail": detail[:2000]})


class MemorySampler(threading.Thread):
    """Peak RSS of a process alone, of its descendants together, and of the whole tree, from /proc."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_server = self.peak_children = self.peak_tree = 0
        self.descendants: dict[int, int] = {}  # every descendant seen: pid -> start time
        self.halt = threading.Event()

    @staticmethod
    def rss(pid: int) -> int:
        """Resident bytes of one process (0 if it is gone)."""
        try:
            return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            return 0

    @staticmethod
    def stat(pid: int) -> tuple[int, int] | None:
        """(parent pid, start time in clock ticks) of a process, or None if it is gone or a zombie."""
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return None if fields[0] == "Z" else (int(fields[1]), int(fields[19]))
        except (OSError, IndexError, ValueError):
            return None

    def children(self) -> dict[int, int]:
        """Every descendant of the process now, with its start time."""
        kids: dict[int, list[tuple[int, int]]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (st := self.stat(int(entry.name))):
                kids.setdefault(st[0], []).append((int(entry.name), st[1]))
        found: dict[int, int] = {}
        todo = [self.pid]
        while todo:
            for child, started in kids.get(todo.pop(), []):
                found[child] = started
                todo.append(child)
        return found

    def survivors(self) -> list[int]:
        """The descendants seen while sampling that still run (the same processes, not reused pids)."""
        return [pid for pid, started in self.descendants.items() if (st := self.stat(pid)) and st[1] == started]

    def sample(self) -> bool:
        """Take one sample and update the peaks; False once the process is gone."""
        server = self.rss(self.pid)
        if not server:
            return False
        kids = self.children()
        self.descendants.update(kids)
        children = sum(self.rss(p) for p in kids)
        self.peak_server = max(self.peak_server, server)
        self.peak_children = max(self.peak_children, children)
        self.peak_tree = max(self.peak_tree, server + children)
        self.observe(kids, server + children)
        return True

    def observe(self, kids: dict[int, int], tree: int) -> None:
        """Called after every sample with the descendants and the tree's resident bytes (for subclasses)."""

    def run(self) -> None:
        while not self.halt.wait(self.every) and self.sample():
            pass


class Server:
    """`streamlit run app.py` on a free port, its output in a log file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.log_path, self.url = log, f"http://127.0.0.1:{port}"
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                                      "--server.headless", "true", "--server.address", "127.0.0.1",
                                      "--browser.gatherUsageStats", "false"],
                                     cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=1)
                return
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(log.read_text()[-2000:])
                time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def tracebacks(self) -> list[str]:
        """The exception line of every traceback in the server's log."""
        chunks = ANSI.sub("", self.log_path.read_text(errors="replace")).split("Traceback (most recent call last)")[1:]
        return [m.group(0).strip() if (m := EXCEPTION_LINE.search(c)) else "?" for c in chunks]


class Client:
    """One browser context and its page, counting its exception boxes, error messages and page errors."""

    def __init__(self, name: str, page: Any, stats: Stats) -> None:
        self.name, self.page, self.stats = name, page, stats
        self.seen: set[str] = set()  # exception boxes and error messages reported since the last page load
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda e: stats.error(name, "page error", str(e)))

    @classmethod
    async def start(cls, browser: Any, name: str, stats: Stats) -> "Client":
        """A client in a fresh browser context."""
        context = await browser.new_context(viewport={"width": 1400, "height": 1000})
        return cls(name, await context.new_page(), stats)

    def failed(self, e: Exception) -> None:
        """Record a Playwright error."""
        self.stats.error(self.name, "timeout" if "Timeout" in type(e).__name__ else "playwright", str(e))

    def trouble_shown(self) -> Any:
        """A locator for an exception box or an error message (st.error) on the page."""
        return self.page.get_by_test_id("stException").or_(self.page.get_by_test_id("stAlertContentError"))

    async def trouble(self) -> bool:
        """Whether the page shows an exception box or an error message; each is recorded once per page load."""
        for kind, test_id in (("exception box", "stException"), ("error message", "stAlertContentError")):
            for text in [await b.inner_text() for b in await self.page.get_by_test_id(test_id).all()]:
                if text not in self.seen:
                    self.seen.add(text)
                    self.stats.error(self.name, kind, text)
        return bool(self.seen)

    async def open(self, url: str, ready: str, tries: int = 3) -> bool:
        """Load a page until `ready` shows without trouble; False after `tries` failures."""
        from playwright.async_api import Error as PlaywrightError

        for _ in range(tries):
            self.seen.clear()
            try:
                await self.page.goto(url)
                await self.page.get_by_text(ready, exact=True).or_(self.trouble_shown()).first.wait_for()
            except PlaywrightError as e:
                self.failed(e)
                continue
            if not await self.trouble():
                return True
        return False

    async def close(self) -> None:
        """Close the browser context."""
        await self.page.context.close()


def pictures() -> list[tuple[str, bytes]]:
    """Small and large PNG, JPEG and WebP pictures as (extension, bytes)."""
    return [("png", samples.encode(samples.gradient(64, 48), "PNG")),
            ("jpg", samples.encode(samples.gradient(640, 480), "JPEG")),
            ("webp", samples.encode(samples.gradient(320, 240), "WEBP")),
            ("jpg", samples.encode(samples.gradient(1600, 1200), "JPEG", quality=90))]


async def classify_client(client: Client, url: str, seconds: float, ready: asyncio.Barrier,
                          shots: list[tuple[str, bytes]]) -> None:
    """Upload, wait for the top-5 chart, remove the picture; repeat until the time is up."""
    from playwright.async_api import Error as PlaywrightError

    page, stats = client.page, client.stats
    opened = await client.open(url, "Your pictures")
    await ready.wait()
    deadline, n = time.monotonic() + seconds, 0
    for ext, blob in itertools.cycle(shots):
        if time.monotonic() >= deadline:
            break
        name, n = f"{client.name}-{n:04d}.{ext}", n + 1
        row = page.get_by_test_id("stHorizontalBlock").filter(has_text=name)
        try:
            if not opened:
                opened = await client.open(url, "Your pictures", tries=1)
                continue
            sent = stats.now()
            await page.locator('input[type="file"]').set_input_files({"name": name, "mimeType": MIME[ext],
                                                                      "buffer": blob})
            await row.locator(".js-plotly-plot").or_(client.trouble_shown()).first.wait_for()
            if await client.trouble():
                opened = False
                continue
            stats.uploads.append((sent, stats.now() - sent))
            await page.get_by_test_id("stFileChipDeleteBtn").first.click()
            await row.wait_for(state="detached")
        except PlaywrightError as e:
            client.failed(e)
            await client.trouble()
            opened = False
    await client.close()


async def train_client(client: Client, url: str, ready: asyncio.Barrier, together: asyncio.Barrier) -> None:
    """Open a small training, press Train with the other train clients, follow the job to its end."""
    from playwright.async_api import Error as PlaywrightError

    page, stats, record = client.page, client.stats, Trainer(client.name)
    stats.trainers.append(record)
    opened = await client.open(url, "Batch size")
    try:
        if opened:
            await page.get_by_text(TRAIN_SUMMARY).wait_for()
    except PlaywrightError as e:
        client.failed(e)
        opened = False
    await ready.wait()
    await together.wait()
    if not opened:
        await client.close()
        return
    clicked, record.clicked_at, record.outcome = time.monotonic(), round(stats.now(), 2), "timeout"
    queued, progress = page.get_by_text("Waiting for a training slot"), page.get_by_test_id("stProgress")
    done = page.get_by_text("Confusion matrix")
    failed = page.get_by_test_id("stAlertContentError").or_(
        page.get_by_test_id("stAlertContentInfo").filter(has_text=ENDED))
    try:
        await page.get_by_role("button", name="Train", exact=True).click()
        while time.monotonic() - clicked < TRAIN_TIMEOUT_S:
            since = round(time.monotonic() - clicked, 2)
            if record.queued is None and await queued.count():
                record.queued = since
            if record.running is None and await progress.count():
                record.running = since
            if await done.count():
                record.finished, record.outcome = since, "finished"
                break
            if await failed.count():
                record.outcome = (await failed.first.inner_text()).strip()
                stats.error(client.name, "training did not finish", record.outcome)
                break
            if await client.trouble():
                record.outcome = "exception box"
                break
            await asyncio.sleep(0.25)
        else:
            stats.error(client.name, "timeout", f"training not finished {TRAIN_TIMEOUT_S:.0f} s after the click")
    except PlaywrightError as e:
        client.failed(e)
        record.outcome = "playwright error"
    await client.close()


async def drive(url: str, run: str, args: argparse.Namespace, stats: Stats) -> None:
    """One Chromium, every client in its own context, all arriving at once."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
        ready = asyncio.Barrier(args.clients_classify + args.clients_train + 1)
        together = asyncio.Barrier(args.clients_train)
        shots = pictures()  # made once, before the clock starts: encoding them blocks the event loop
        stats.start = time.monotonic()
        tasks = [classify_client(await Client.start(browser, f"classify-{i}", stats), f"{url}/classify?model={run}",
                                 args.seconds, ready, shots) for i in range(args.clients_classify)]
        tasks += [train_client(await Client.start(browser, f"train-{i}", stats), f"{url}/train?{TRAIN_QUERY}",
                               ready, together) for i in range(args.clients_train)]
        running = asyncio.gather(*tasks)
        await ready.wait()
        stats.ready_at = stats.now()
        print(f"all pages open after {stats.ready_at:.0f} s; load running for {args.seconds:g} s", file=sys.stderr)
        await running
        await browser.close()


def data_dir(tmp: Path) -> Path:
    """DECONV_DATA_DIR, else ../shared/cifar10-subset beside the repo, else a small synthetic folder."""
    if os.environ.get("DECONV_DATA_DIR"):
        return Path(os.environ["DECONV_DATA_DIR"])
    shared = ROOT.parent / "shared" / "cifar10-subset"
    return shared if shared.is_dir() else write_cifar(tmp / "data", train_per_class=200, test_per_class=50)


def train_first_model(env: dict[str, str], runs: Path) -> str:
    """Train the model the Classify clients use, with the CLI; returns its run name."""
    name = "load-seed"
    subprocess.run([sys.executable, "-m", "deconv", "train", "--out", str(runs / name), "--epochs", "1",
                    "--train-size", "500", "--val-size", "200"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return name


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, or None without values."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else None


def summarise(stats: Stats, sampler: MemorySampler, args: argparse.Namespace, tracebacks: list[str],
              leftover: list[int], saved: int, load_before: float) -> dict[str, Any]:
    """The figures, ready for JSON."""
    busy = [(t.clicked_at + t.running, t.clicked_at + t.finished) for t in stats.trainers
            if t.clicked_at is not None and t.running is not None and t.finished is not None]
    during = [lat for sent, lat in stats.uploads if any(a <= sent <= b for a, b in busy)]
    idle = [lat for sent, lat in stats.uploads if not any(a <= sent <= b for a, b in busy)]
    latencies = [lat for _, lat in stats.uploads]
    finished = sum(t.outcome == "finished" for t in stats.trainers)
    mib = 2**20

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    return {
        "seconds": args.seconds, "clients_classify": args.clients_classify, "clients_train": args.clients_train,
        "cpus": os.cpu_count(), "load_average_before": round(load_before, 2), "pages_open_s": r(stats.ready_at),
        "uploads_classified": len(latencies), "uploads_per_second": r(len(latencies) / args.seconds),
        "classify_p50_s": r(percentile(latencies, 50)), "classify_p95_s": r(percentile(latencies, 95)),
        "classify_max_s": r(max(latencies, default=None)),
        "uploads_while_training": len(during), "classify_p50_while_training_s": r(percentile(during, 50)),
        "classify_p50_otherwise_s": r(percentile(idle, 50)),
        "training_jobs_finished": finished, "runs_saved_by_training": saved,
        "requests_served": len(latencies) + finished, "errors": len(stats.errors),
        "server_tracebacks": len(tracebacks),
        "peak_rss_server_mib": round(sampler.peak_server / mib),
        "peak_rss_children_mib": round(sampler.peak_children / mib),
        "peak_rss_tree_mib": round(sampler.peak_tree / mib), "processes_left_after_stop": len(leftover),
        "trainers": [asdict(t) for t in stats.trainers], "error_list": stats.errors, "traceback_list": tracebacks,
    }


ROWS = [("time until every client's page was open (s)", "pages_open_s"),
        ("uploads classified", "uploads_classified"), ("uploads per second", "uploads_per_second"),
        ("classify latency p50 (s)", "classify_p50_s"), ("classify latency p95 (s)", "classify_p95_s"),
        ("classify latency max (s)", "classify_max_s"),
        ("uploads sent while a training ran", "uploads_while_training"),
        ("classify p50 while a training runs (s)", "classify_p50_while_training_s"),
        ("classify p50 otherwise (s)", "classify_p50_otherwise_s"),
        ("training jobs finished", "training_jobs_finished"), ("runs saved by training", "runs_saved_by_training"),
        ("requests served", "requests_served"), ("errors", "errors"), ("server tracebacks", "server_tracebacks"),
        ("peak RSS, server process (MiB)", "peak_rss_server_mib"),
        ("peak RSS, its child processes (MiB)", "peak_rss_children_mib"),
        ("peak RSS, whole tree (MiB)", "peak_rss_tree_mib"),
        ("processes left after the server stopped", "processes_left_after_stop"),
        ("load average before", "load_average_before")]


def table(results: dict[str, Any]) -> str:
    """The figures, the trainers' timelines and the errors by kind, as markdown."""
    lines = ["| figure | value |", "|---|---|"] + [f"| {label} | {results[key]} |" for label, key in ROWS]
    lines += ["", "| trainer | queued (s) | running (s) | finished (s) | outcome |", "|---|---|---|---|---|"]
    lines += [f"| {t['client']} | {t['queued']} | {t['running']} | {t['finished']} | {t['outcome']} |"
              for t in results["trainers"]]
    lines += ["", "(trainer times: seconds after its click on Train)"]
    kinds: dict[str, int] = {}
    for e in results["error_list"]:
        key = f"{e['kind']}: {e['detail'].splitlines()[0][:120] if e['detail'] else ''}"
        kinds[key] = kinds.get(key, 0) + 1
    if kinds:
        lines += ["", "| errors | count |", "|---|---|"] + [f"| {k} | {n} |" for k, n in kinds.items()]
    return "\n".join(lines)


def command(args: argparse.Namespace, data: Path) -> str:
    """The shell command that reproduces this run."""
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable
    return (f"DECONV_DATA_DIR={shlex.quote(str(data))} {python} bench/load.py --seconds {args.seconds:g} "
            f"--clients-classify {args.clients_classify} --clients-train {args.clients_train}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120, help="how long the classify clients upload")
    parser.add_argument("--clients-classify", type=int, default=6, help="sessions uploading pictures")
    parser.add_argument("--clients-train", type=int, default=2, help="sessions pressing Train together")
    parser.add_argument("--server-log", type=Path, help="keep the server's output in this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="deconv-load-") as tmp:
        data, runs = data_dir(Path(tmp)), Path(tmp) / "runs"
        env = {**os.environ, "DECONV_DATA_DIR": str(data), "DECONV_RUNS_DIR": str(runs), "DECONV_MAX_JOBS": "1",
               "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "160"}
        print(f"training the model to classify with (data: {data})", file=sys.stderr)
        run = train_first_model(env, runs)
        load_before = os.getloadavg()[0]
        server = Server(env, Path(tmp) / "streamlit.log")
        sampler = MemorySampler(server.proc.pid)
        sampler.start()
        stats = Stats()
        try:
            asyncio.run(drive(server.url, run, args, stats))
        finally:
            sampler.halt.set()
            sampler.join()
            server.stop()
            if args.server_log:
                shutil.copy(server.log_path, args.server_log)
        time.sleep(1)
        leftover = sampler.survivors()
        for pid in leftover:  # the server's children that outlived it
            os.kill(pid, signal.SIGKILL)
        saved = sum(1 for p in runs.iterdir() if p.name != run and (p / "model.keras").exists())
        results = summarise(stats, sampler, args, server.tracebacks(), leftover, saved, load_before)
    results["command"] = command(args, data)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}; reproduce with:\n{results['command']}")


if __name__ == "__main__":
    main()
