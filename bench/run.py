"""Benchmarks: measure and print, never assert. `python bench/run.py [--repeats N] [--quick]`.

Writes bench/results.json. Every figure is a median over repeats, each measured in a fresh child
process (one process tree, run side by side) so that no run inherits another's warm caches; the
measurements those children make are the functions in bench/measure.py.
Needs DECONV_DATA_DIR (or a Keras-cached CIFAR-10) for the accuracy figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PY = sys.executable

from deconv.config import TrainConfig  # noqa: E402  (after the path is set)


def child(name: str, timeout: float = 900, **kwargs: object) -> dict:
    """Run the measurement bench.measure.<name>(**kwargs) in a fresh process and return its figures."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([PY, "-m", "bench.measure", name, json.dumps(kwargs)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(values: list[float]) -> float:
    """The median, rounded for printing."""
    return round(statistics.median(values), 3)


def time_to_accuracy(repeats: int) -> dict:
    """`python -m deconv train` with its defaults: validation accuracy after each epoch against train seconds.

    Each epoch's figure is one view (Keras' validation pass); the run's final figure is the saved model's as the app
    answers (averaged with the mirror image by default), measured just after training: it counts at train_seconds.
    """
    finals, seconds, curves, one_view = [], [], [], []
    for seed in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([PY, "-m", "deconv", "train", "--seed", str(seed), "--out", f"{tmp}/run",
                                  "--progress", f"{tmp}/p.jsonl"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=1800)
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-2000:])
            summary = json.loads(out.stdout.strip().splitlines()[-1])
            epochs = [json.loads(line) for line in Path(f"{tmp}/p.jsonl").read_text().splitlines()]
            curves.append([(round(e["elapsed"], 1), round(e["val_accuracy"], 4)) for e in epochs if e["event"] == "epoch"])
            one_view.append(curves[-1][-1][1])
            finals.append(summary["val_accuracy"])
            seconds.append(summary["train_seconds"])
            curves[-1].append((round(summary["train_seconds"], 1), round(summary["val_accuracy"], 4)))
    def reached(curve: list, target: float) -> float | None:
        return next((t for t, a in curve if a >= target), None)

    def median_or_none(values: list) -> float | None:
        return median(values) if values and None not in values else None

    return {"val_accuracy": median(finals), "last_epoch_one_view": median(one_view), "finals": finals,
            "train_seconds": median(seconds),
            "accuracy_at_60s": median([max([a for t, a in c if t <= 60] or [0.0]) for c in curves]),
            "seconds_to_60": median_or_none([reached(c, 0.6) for c in curves]),
            "seconds_to_70": median_or_none([reached(c, 0.7) for c in curves]), "runs": curves}


def reference() -> dict:
    """The shipped reference model's accuracy, as `python -m deconv evaluate` measures it, beside what its run claims."""
    run = ROOT / "assets" / "reference-run"
    out = subprocess.run([PY, "-m", "deconv", "evaluate", str(run)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    claimed = json.loads((run / "meta.json").read_text())["val_accuracy"]
    return {"accuracy": round(measured["accuracy"], 4), "images": measured["n"], "claimed": round(claimed, 4),
            "size_kb": round(sum(f.stat().st_size for f in run.rglob("*") if f.is_file()) / 1000)}


def upsampling(repeats: int) -> dict:
    """`python -m deconv train` with transpose and with resize upsampling (seeds interleaved, so both see the same
    machine load): validation accuracy, train seconds and the trained decoder's checkerboard score, medians."""
    found: dict[str, dict[str, list[float]]] = {}
    for seed in range(repeats):
        for way in ("transpose", "resize"):
            with tempfile.TemporaryDirectory() as tmp:
                out = subprocess.run([PY, "-m", "deconv", "train", "--upsample", way, "--seed", str(seed),
                                      "--out", f"{tmp}/run"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
                if out.returncode != 0:
                    raise RuntimeError(out.stderr[-2000:])
                summary = json.loads(out.stdout.strip().splitlines()[-1])
                scores = child("checkerboard", run_dir=f"{tmp}/run")
            row = found.setdefault(way, {"val_accuracy": [], "train_seconds": [], "checkerboard": []})
            row["val_accuracy"].append(summary["val_accuracy"])
            row["train_seconds"].append(summary["train_seconds"])
            row["checkerboard"].append(statistics.mean(scores.values()))
    return {way: {k: median(v) for k, v in row.items()} for way, row in found.items()}


def app_path_ratio(repeats: int) -> dict:
    """The same small training through the app's JobManager (warm worker) and through the bare CLI."""
    from deconv.config import ModelConfig, TrainConfig
    from deconv.jobs import JobManager

    model_config, train_config = ModelConfig(), TrainConfig(train_size=5000, epochs=2)
    app, cli = [], []
    with tempfile.TemporaryDirectory() as tmp:
        manager = JobManager(Path(tmp) / ".jobs", max_jobs=1)
        try:
            for i in range(repeats):
                time.sleep(8)  # let the warm worker finish importing TensorFlow, as it has on a real server
                t = time.perf_counter()
                job = manager.submit(f"bench{i}", model_config, train_config, Path(tmp) / f"app{i}")
                while job.active:
                    time.sleep(0.05)
                app.append(time.perf_counter() - t)
                flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**model_config.to_query(),
                                                                      **train_config.to_query()}.items()]
                t = time.perf_counter()
                subprocess.run([PY, "-m", "deconv", "train", *flags, "--out", f"{tmp}/cli{i}"], cwd=ROOT,
                               capture_output=True, check=True)
                cli.append(time.perf_counter() - t)
        finally:
            manager.shutdown()
    return {"app_seconds": median(app), "cli_seconds": median(cli), "cli_over_app": median([c / a for c, a in zip(cli, app)])}


def first_batch(repeats: int) -> dict:
    """Seconds from a Train click (the job manager's submit) to the first training batch done, in the app's workers:
    the default settings (the worker compiled them while it waited), and a changed width, the first time and again."""
    from deconv.config import ModelConfig, TrainConfig
    from deconv.jobs import JobManager

    changed = ModelConfig(widths=(40, *ModelConfig().widths[1:]))
    seconds: dict[str, list[float]] = {"default": [], "changed_width_first": [], "changed_width_again": []}
    for i in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            manager = JobManager(Path(tmp) / ".jobs", max_jobs=1)
            try:
                for name, config in (("default", ModelConfig()), ("changed_width_first", changed),
                                     ("changed_width_again", changed)):
                    time.sleep(20)  # the warm worker has imported TensorFlow and compiled the default network
                    t = time.time()
                    job = manager.submit(f"bench{i}", config, TrainConfig(seed=i), Path(tmp) / f"{name}{i}")
                    while job.active and not job.newest("batch"):
                        time.sleep(0.02)
                    batch = job.newest("batch")
                    seconds[name].append(batch["time"] - t if batch else float("nan"))
                    manager.stop(job)
                    while job.active:
                        time.sleep(0.1)
            finally:
                manager.shutdown()
    return {k: median(v) for k, v in seconds.items()}


def throughput(r: int) -> dict:
    """Training speed of the default and the article's network, and of the default trained the plain Keras way."""
    batch = TrainConfig().batch_size  # the default's
    default = [child("throughput", preset_name="default", batch=batch, steps=5120 // batch, warm=3)
               for _ in range(r)]
    plain = [child("plain_keras", batch=batch, steps=5120 // batch) for _ in range(r)]
    article = [child("throughput", timeout=1800, preset_name="article", batch=8, steps=2, warm=1) for _ in range(r)]
    return {
        "default_images_per_second": median([d["images_per_second"] for d in default]),
        "article_images_per_second": median([a["images_per_second"] for a in article]),
        "default_over_article": median([d["images_per_second"] / a["images_per_second"] for d, a in zip(default, article)]),
        "plain_keras_images_per_second": median([p["images_per_second"] for p in plain]),
        "default_over_plain_keras": median([d["images_per_second"] / p["images_per_second"] for d, p in zip(default, plain)]),
        "default_train_gflops": median([d["train_gflops"] for d in default]),
        "article_train_gflops": median([a["train_gflops"] for a in article])}


def cold_start(repeats: int) -> dict:
    """Seconds from `streamlit run app.py` to its health check answering, and to the Home page drawn in Chromium."""
    import importlib.util
    import shutil

    browser = shutil.which("chromium") if importlib.util.find_spec("playwright") else None
    health, drawn = [], []
    for i in range(repeats):
        port = 8650 + i
        t = time.perf_counter()
        proc = subprocess.Popen([PY, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                                 "--server.headless", "true"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.05)
            health.append(time.perf_counter() - t)
            if browser:
                drawn.append(page_drawn(browser, port) - t)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    out = {"health_seconds": median(health)}
    if drawn:
        out["home_drawn_seconds"] = median(drawn)
    return out


def page_drawn(browser: str, port: int) -> float:
    """perf_counter() when Chromium shows the Home page's content (needs playwright)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser, args=["--headless", "--no-sandbox", "--disable-gpu",
                                                             "--disable-background-networking", "--no-first-run"])
        page = b.new_page()
        page.goto(f"http://localhost:{port}/")
        page.get_by_text("The idea").wait_for(timeout=120_000)
        done = time.perf_counter()
        b.close()
    return done


def main() -> None:
    """Measure everything and write bench/results.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip time-to-accuracy and the app path")
    parser.add_argument("--only", help="comma-separated measurements to make (e.g. time_to_accuracy,first_batch); "
                                       "results.json keeps the others' earlier figures")
    args = parser.parse_args()
    r = args.repeats
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"}
    only = set(args.only.split(",")) if args.only else None
    if only:
        results = {**json.loads((ROOT / "bench" / "results.json").read_text()), **results}

    def run(name: str, fn) -> None:
        if only and name not in only:
            return
        t = time.perf_counter()
        results[name] = fn()
        print(f"{name:20s} {json.dumps(results[name])[:200]}  ({time.perf_counter() - t:.0f} s)", flush=True)

    run("matmul", lambda: {"gflops": median([child("matmul")["gflops"] for _ in range(r)])})
    run("throughput", lambda: throughput(r))
    if "throughput" in results and "matmul" in results:
        results["utilisation"] = round(results["throughput"]["default_train_gflops"] / results["matmul"]["gflops"], 3)
    run("classify_latency", lambda: {k: median([c[k] for c in [child("latency") for _ in range(r)]])
                                     for k in ("p50_ms", "p95_ms", "batch64_ms")})
    run("peak_rss_50k", lambda: child("peak_rss"))
    run("cold_start", lambda: cold_start(r))
    run("first_batch", lambda: first_batch(r))
    run("reference", reference)  # deterministic: measured once
    if not args.quick:
        run("time_to_accuracy", lambda: time_to_accuracy(r))
        run("upsampling", lambda: upsampling(r))
        run("app_path", lambda: app_path_ratio(r))
    (ROOT / "bench" / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
