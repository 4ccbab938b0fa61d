"""Hostile visitors at the protocol level: attacks on one shared server, each followed by an honest visitor.

`python bench/hostile_visitors.py [--only NAME,...] [--no-honest] [--keep]` (also run by `python bench/hostile.py`)

Measures and prints, never asserts. One `streamlit run app.py` (one training slot, addresses taken from
X-Forwarded-For so that the bench can be several machines, a 2 GiB runs quota) is attacked by websocket
clients that speak Streamlit's own messages (bench/protocol.py): a visitor who tries every value another
was shown or could download as its identity, one who sends clear_cache, one who imports a costly network,
one who uploads progressive-JPEG scan bombs, one who fills the runs folder with imports, a script that
opens many sessions from one address and presses Train in each, one whose imported report carries
Markdown and HTML. For each it prints what the server spent (CPU seconds of the server and its children,
peak memory of the process tree, runs-folder growth) and whether an honest visitor, from another address,
could still train, import, classify and delete their own run. Writes bench/hostile_visitors_results.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import MemorySampler  # noqa: E402
from bench.protocol import ProtocolError, Visitor  # noqa: E402

RESULTS = ROOT / "bench" / "hostile_visitors_results.json"
DATA = ROOT.parent / "shared" / "cifar10-subset" / "cifar-10-batches-py"  # unless DECONV_DATA_DIR is set
COOKIE = "deconv_owner"  # pages.parts.state.COOKIE, written out: the bench speaks to the app as a browser does
SMALL = {"widths": "8", "train_size": "300", "val_size": "100", "epochs": "1"}  # trains in seconds
LONG = {**SMALL, "epochs": "200"}  # runs until stopped
HEX = re.compile(r"[0-9a-f]{16,64}")
TICKS = os.sysconf("SC_CLK_TCK")
SETTINGS = {"DECONV_MAX_JOBS": "1", "DECONV_MAX_QUEUE": "20", "DECONV_PROXY_HEADER": "X-Forwarded-For",
            "DECONV_RUNS_QUOTA": "2G"}


@dataclass
class Outcome:
    """One attack: what it did, what the server answered and spent, and what an honest visitor could do after."""

    attack: str
    what: str
    answer: str = ""
    cpu_seconds: float = 0.0  # the server process's own (its pages, imports, uploads), during the attack
    children_cpu_seconds: float = 0.0  # its trainers' and import checks', during the attack (a victim's training too)
    peak_tree_mib: float = 0.0  # the largest resident size of the server's process tree during the attack
    disk_mib: float = 0.0  # how much the runs folder grew
    seconds: float = 0.0
    honest: dict[str, str] = field(default_factory=dict)  # train / import / classify / delete -> what happened


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of a process itself (all its threads: the pages), and of its descendants, running or reaped
    (trainers, import checks)."""
    def fields(p: int) -> list[int]:
        try:
            return [int(f) for f in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[11:15]]
        except (OSError, ValueError, IndexError):
            return [0, 0, 0, 0]
    own = fields(pid)
    children = own[2] + own[3] + sum(sum(fields(child)) for child in MemorySampler(pid).children())
    return (own[0] + own[1]) / TICKS, children / TICKS


def folder_bytes(folder: Path) -> int:
    """Bytes under a folder."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


class Bench:
    """The server, its runs folder, and the honest visitor's checks."""

    def __init__(self, tmp: Path, data: Path) -> None:
        self.tmp, self.runs = tmp, tmp / "runs"
        env = {**os.environ, "DECONV_DATA_DIR": str(data), "DECONV_RUNS_DIR": str(self.runs), **SETTINGS}
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = open(tmp / "streamlit.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port",
                                      self.url.rsplit(":", 1)[1], "--server.headless", "true",
                                      "--server.address", "127.0.0.1"], cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.seed = self.train_seed(env)
        deadline = time.time() + 90
        while True:
            try:
                Visitor(self.url, timeout=10).connect().close()
                break
            except (OSError, ProtocolError):
                if time.time() > deadline:
                    raise RuntimeError("the server did not start")
                time.sleep(0.5)

    def train_seed(self, env: dict[str, str]) -> bytes:
        """A small real run, trained with the CLI, as the zip the Runs page exports and imports."""
        out = self.tmp / "seed"
        subprocess.run([sys.executable, "-m", "deconv", "train", "--widths", "8", "--train-size", "300",
                        "--val-size", "100", "--epochs", "1", "--out", str(out)], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        return zip_folder(out, "seed")

    def measure(self, outcome: Outcome, attack: Callable[[], str], honest: bool = True) -> None:
        """Run an attack, recording what it cost the server, then the honest visitor's checks."""
        sampler = MemorySampler(self.proc.pid, every=0.2)
        sampler.start()
        cpu, disk, began = cpu_seconds(self.proc.pid), folder_bytes(self.runs), time.monotonic()
        try:
            outcome.answer = attack()
        except (ProtocolError, OSError) as e:
            outcome.answer = f"the attack broke off: {e}"
        outcome.seconds = round(time.monotonic() - began, 1)
        own, children = cpu_seconds(self.proc.pid)
        outcome.cpu_seconds, outcome.children_cpu_seconds = round(own - cpu[0], 1), round(children - cpu[1], 1)
        sampler.halt.set()
        sampler.join()
        outcome.peak_tree_mib = round(sampler.peak_tree / 2**20)
        outcome.disk_mib = round((folder_bytes(self.runs) - disk) / 2**20, 1)
        outcome.honest = self.honest_visitor() if honest else {}
        print(f"  {outcome.attack}: {outcome.answer[:160]} | {outcome.cpu_seconds} s CPU "
              f"(+{outcome.children_cpu_seconds} s children), "
              f"{outcome.peak_tree_mib} MiB tree, {outcome.disk_mib:+} MiB | honest: {outcome.honest}",
              file=sys.stderr)

    def visitor(self, address: str, token: str | None = None) -> Visitor:
        """A connected visitor from `address`, with a fresh identity (or `token`)."""
        return Visitor(self.url, cookies={COOKIE: token or os.urandom(16).hex()},
                       headers={"X-Forwarded-For": address}, timeout=180).connect()

    def honest_visitor(self) -> dict[str, str]:
        """A new visitor from an address of its own trains, imports, classifies and deletes its own run."""
        said: dict[str, str] = {}
        with self.visitor("198.51.100.7") as v:
            v.open("train", SMALL)
            v.click("Train")
            said["train"] = "refused: " + refusal(v.text()) if "Not started" in v.text() else "accepted"
            if said["train"] == "accepted":
                deadline = time.time() + 300
                while time.time() < deadline and not re.search(r"Trained \d+ epoch", v.open("train").text()):
                    time.sleep(1)
                said["train"] = "trained" if time.time() < deadline else "accepted, not trained within 300 s"
            v.open("runs")
            mine = "by you" in v.text() and v.has_widget("Yes, delete")
            v.upload("Zipped run folder", [("seed.zip", self.seed)])
            if v.has_widget("Import"):
                v.click("Import")
            said["import"] = first_line(v.text(), ("Imported as", "Not imported"))
            v.open("classify")
            v.upload("Images", [("red.png", red_png())])
            said["classify"] = "answered" if re.search(r"\*\*\w+\*\* \d+%", v.text()) else "no answer"
            v.open("runs")
            if mine:
                v.set("Yes, delete", "bool_value", True)
                v.click("Delete this run")
                said["delete"] = first_line(v.text(), ("Deleted", "only whoever")) or "deleted"
            else:
                said["delete"] = "its run was not the one shown first"
        return said

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zip_folder(folder: Path, name: str, replace: dict[str, bytes] | None = None) -> bytes:
    """A run folder as the Runs page's zip (files under a folder `name`), some files replaced."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                rel = path.relative_to(folder).as_posix()
                z.writestr(f"{name}/{rel}", (replace or {}).get(rel, path.read_bytes()))
        for rel, body in (replace or {}).items():
            if not (folder / rel).exists():
                z.writestr(f"{name}/{rel}", body)
    return out.getvalue()


def red_png() -> bytes:
    """A small honest picture."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def refusal(text: str) -> str:
    """The 'Not started: ...' line of a page."""
    return first_line(text, ("Not started",))


def first_line(text: str, starts: tuple[str, ...]) -> str:
    """The first line of a page's text that contains one of `starts`, shortened."""
    return next((line.strip()[:200] for line in text.splitlines() if any(s in line for s in starts)), "")


# ---- the attacks


def copied_identity(bench: Bench) -> str:
    """Everything a victim is shown or downloads, tried as the attacker's cookie and in ?client= links."""
    victim = os.urandom(16).hex()
    with bench.visitor("192.0.2.1", victim) as v:
        v.open("train", SMALL)
        v.click("Train")
        deadline = time.time() + 300
        while time.time() < deadline and not re.search(r"Trained \d+ epoch", v.open("train").text()):
            time.sleep(1)
        seen = []
        for page in ("", "train", "classify", "runs"):
            v.open(page)
            seen += [v.query, v.text()]
        for label in ("Run folder (zip)", "model.keras", "History (CSV)", "Runs table (CSV)"):  # its downloads
            try:
                with zipfile.ZipFile(io.BytesIO(blob := v.download(label))) as z:
                    seen += [z.read(n).decode("latin-1") for n in z.namelist()]
            except zipfile.BadZipFile:
                seen.append(blob.decode("latin-1"))
            except ProtocolError:
                continue
    candidates = sorted({m for text in seen for m in HEX.findall(text)})
    leaked = any(victim in text for text in seen)
    could_delete = 0
    for candidate in candidates[:20]:
        with bench.visitor("192.0.2.2", candidate[:32].ljust(32, "0")) as a:
            a.open("runs", {"client": candidate[:16]})
            could_delete += a.has_widget("Yes, delete") and "by you" in a.text()
    return (f"token {'LEAKED' if leaked else 'never shown or downloaded'}; {len(candidates)} values seen, "
            f"{could_delete} of {min(len(candidates), 20)} tried as identities could delete the victim's run")


def cache_clears(bench: Bench) -> str:
    """clear_cache sent 20 times, each followed by a page run, while a victim trains."""
    def workers() -> int:
        return sum(b"worker" in Path(f"/proc/{p}/cmdline").read_bytes()
                   for p in MemorySampler(bench.proc.pid).children() if Path(f"/proc/{p}/cmdline").exists())

    with bench.visitor("192.0.2.3") as victim, bench.visitor("192.0.2.4") as a:
        victim.open("train", LONG)
        victim.click("Train")
        before = workers()
        for _ in range(20):
            a.clear_cache()
            a.open("train")
        after, still = workers(), victim.open("train").has_widget("Stop")
        victim.click("Stop") if still else None
        return (f"worker processes {before} -> {after}; the victim's training "
                f"{'still shown with its Stop button' if still else 'LOST from its page'}")


def queue_flood(bench: Bench) -> str:
    """21 sessions with fresh cookies from one address press Train on a long training."""
    sessions = [bench.visitor("192.0.2.66") for _ in range(21)]
    try:
        answers = []
        for s in sessions:
            s.open("train", LONG)
            s.click("Train")
            answers.append("refused" if "Not started" in s.text() else "accepted")
        refused = next((refusal(s.text()) for s in sessions if "Not started" in s.text()), "")
        return f"{answers.count('accepted')} of 21 accepted; the rest: {refused}"
    finally:
        for s in sessions:  # closed tabs: their trainings stop 15 s later and free the slot for the honest visitor
            s.close()


def quota_fill(bench: Bench) -> str:
    """One visitor imports a zip of a network with 80 MiB of zero weights again and again, until refused."""
    blob = network_zip(bench, WIDE_HEAD, "wide")
    accepted, answer = 0, ""
    with bench.visitor("192.0.2.5") as a:
        for i in range(20):
            a.open("runs")
            a.upload("Zipped run folder", [(f"wide{i}.zip", blob)])
            a.click("Import")
            answer = first_line(a.text(), ("Imported as", "Not imported"))
            if not answer.startswith("Imported"):
                break
            accepted += 1
    return f"{len(blob) / 1024:,.0f} kB zip: {accepted} imports accepted, then: {answer or 'none refused'}"


def markup_labels(bench: Bench) -> str:
    """A run whose report names its classes with a Markdown link and an HTML image, shown to another visitor."""
    seed = zipfile.ZipFile(io.BytesIO(bench.seed))
    report = json.loads(seed.read("seed/report.json"))
    report["labels"] = ["[click](http://192.0.2.9/x)", "<img src=http://192.0.2.9/p.png>", *report["labels"][2:]]
    with tempfile.TemporaryDirectory() as tmp:
        seed.extractall(tmp)
        blob = zip_folder(Path(tmp) / "seed", "markup", {"report.json": json.dumps(report).encode()})
    with bench.visitor("192.0.2.6") as a:
        a.open("runs")
        a.upload("Zipped run folder", [("markup.zip", blob)])
        a.click("Import")
        imported = first_line(a.text(), ("Imported as", "Not imported"))
        live = [t for t in a.texts() if "](http" in t.replace("\\]", "") and "\\[" not in t or "<img" in t]
        return f"{imported}; texts that render a link or an image: {len(live)}"


def network_zip(bench: Bench, config_fields: dict, name: str) -> bytes:
    """The seed run with another network (ModelConfig fields) and zero weights: a small zip of a big model."""
    import keras

    from deconv.config import ModelConfig
    from deconv.model import build_model

    config = ModelConfig(**config_fields)
    model = build_model(config)
    model.set_weights([w * 0 for w in model.get_weights()])
    seed = zipfile.ZipFile(io.BytesIO(bench.seed))
    with tempfile.TemporaryDirectory() as tmp:
        seed.extractall(tmp)
        keras.saving.save_model(model, Path(tmp) / "big.keras")
        settings = json.loads(seed.read("seed/config.json"))
        settings["model"] = config.to_dict()
        return zip_folder(Path(tmp) / "seed", name, {"model.keras": (Path(tmp) / "big.keras").read_bytes(),
                                                     "config.json": json.dumps(settings).encode()})


# The largest network the settings allow: 4 blocks of 256, 7x7 kernels, stride 1, 3 decoder blocks (about 1.15
# TFLOPs per image); and a cheap one whose flatten head holds 80 MiB of weights (its zip, 5.5 MB, fits an upload).
LARGEST = {"widths": (256, 256, 256, 256), "conv_kernel": 7, "conv_stride": 1, "deconv_kernel": 7,
           "upsample": "resize", "up_blocks": 3}
WIDE_HEAD = {"widths": (32,), "conv_stride": 1, "block_deconvs": True, "deconv_stride": 2, "up_blocks": 2,
             "head": "flatten", "pool_size": 1}


def costly_import(bench: Bench) -> str:
    """The largest network with zero weights, imported, made the active model, and asked to classify a picture."""
    blob = network_zip(bench, LARGEST, "largest")
    with bench.visitor("192.0.2.7") as a:
        a.open("runs")
        a.upload("Zipped run folder", [("largest.zip", blob)])
        a.click("Import")
        imported = first_line(a.text(), ("Imported as", "Not imported"))
        answer = ""
        if imported.startswith("Imported"):
            a.open("runs")
            if a.has_widget("Make active"):
                a.click("Make active")
            a.open("classify")
            a.upload("Images", [("red.png", red_png())])
            answer = "; Classify: " + (first_line(a.text(), ("Not computed", "%")) or "no answer")
        return f"{len(blob) / 1024:,.0f} kB zip: {imported}{answer}"


def scan_bombs(bench: Bench) -> str:
    """20 progressive JPEGs in one upload, each declaring 8000x5000 pixels with 1,000 scans (23 s each to decode)."""
    from deconv import samples

    data = samples.encode(samples.gradient(64, 48), "JPEG", progressive=True)
    last = data.rindex(b"\xff\xda")  # the last scan, repeated: a few bytes each, one more pass over the picture
    bomb = data[:-2] + data[last:-2] * (1000 - data.count(b"\xff\xda")) + data[-2:]
    frame = bomb.index(b"\xff\xc2")  # the frame header: marker, length, precision, height, width
    bomb = bomb[:frame + 5] + (5000).to_bytes(2, "big") + (8000).to_bytes(2, "big") + bomb[frame + 9:]
    with bench.visitor("192.0.2.8") as a:
        a.open("classify")
        a.upload("Images", [(f"bomb{i}.jpg", bomb) for i in range(20)])
        refused = sum("scans" in t for t in a.texts())
        return f"20 files of {len(bomb) / 1024:,.0f} kB: {refused} refused for their scans"


ATTACKS: dict[str, tuple[str, Callable[[Bench], str]]] = {
    "copied identity": ("every value a victim was shown or downloaded, as the cookie and in links", copied_identity),
    "cache clears": ("clear_cache x20 while a victim trains", cache_clears),
    "queue flood": ("21 sessions from one address press Train", queue_flood),
    "quota fill": ("a zip of 80 MiB of weights imported until refused", quota_fill),
    "costly import": ("the largest network the settings allow, zero weights, imported and used", costly_import),
    "scan bombs": ("20 progressive JPEGs of 1,000 scans in one upload", scan_bombs),
    "markup labels": ("a report whose label names are a link and an <img>", markup_labels),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help=f"comma-separated attacks (default all): {', '.join(ATTACKS)}")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (runs, server log)")
    parser.add_argument("--no-honest", action="store_true", help="skip the honest visitor after each attack")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON results go")
    args = parser.parse_args()
    chosen = [a.strip() for a in args.only.split(",") if a.strip()] or list(ATTACKS)
    unknown = [a for a in chosen if a not in ATTACKS]
    if unknown:
        parser.error(f"unknown attacks {unknown}: choose from {list(ATTACKS)}")
    tmp = Path(tempfile.mkdtemp(prefix="deconv-visitors-"))
    data = Path(os.environ.get("DECONV_DATA_DIR") or DATA)
    print(f"server on a fresh runs folder in {tmp} (data: {data})", file=sys.stderr)
    bench = Bench(tmp, data)
    outcomes: list[Outcome] = []
    try:
        for name in chosen:
            what, attack = ATTACKS[name]
            outcome = Outcome(name, what)
            bench.measure(outcome, lambda: attack(bench), honest=not args.no_honest)
            outcomes.append(outcome)
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    results = {"command": "python bench/hostile_visitors.py" + (f" --only '{args.only}'" if args.only else "")
               + (" --no-honest" if args.no_honest else ""),
               "settings": SETTINGS, "cpus": os.cpu_count(), "attacks": [asdict(o) for o in outcomes]}
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(report(outcomes))
    print(f"\nwritten to {args.results}")


def report(outcomes: list[Outcome]) -> str:
    """The outcomes as a Markdown table."""
    lines = ["| attack | the server's answer | server CPU s | children CPU s | tree peak MiB | disk MiB | "
             "honest visitor after it |", "|---|---|---|---|---|---|---|"]
    for o in outcomes:
        honest = ", ".join(f"{k}: {v}" for k, v in o.honest.items()).replace("|", "/")
        lines.append(f"| {o.attack} | {o.answer.replace('|', '/')} | {o.cpu_seconds} | {o.children_cpu_seconds} | "
                     f"{o.peak_tree_mib} | "
                     f"{o.disk_mib:+} | {honest} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
