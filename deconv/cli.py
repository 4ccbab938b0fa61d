"""The command line: `python -m deconv train|evaluate|classify|describe`.

Flags for configs are generated from the config classes, so their names, defaults and ranges
are the ones the app's sliders show. TensorFlow is imported only by commands that need it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from deconv.config import PRESETS, ModelConfig, Spec, TrainConfig, preset
from deconv.jobs import watch_lifeline

ALIASES = {"learning_rate": ["--lr"]}
STOP = threading.Event()  # set by SIGINT/SIGTERM: training ends after its current batch
STRATEGIES = ("none", "mirrored", "multiworker")
TF_CONFIG_EXAMPLE = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'


def install_stop_handlers() -> None:
    """Make SIGINT and SIGTERM request a stop instead of killing the process."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: STOP.set())


def _flag(name: str) -> str:
    """--field-name for a config field."""
    return "--" + name.replace("_", "-")


def _parser_type(name: str, typ: str, s: Spec) -> Callable[[str], Any]:
    """An argparse type that parses one config field and names the field and range when it fails."""
    def parse(text: str) -> Any:
        try:
            if s.min_len is not None:
                return tuple(int(v) for v in text.split(",") if v.strip())
            if s.choices:
                return text
            if typ == "bool":
                return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[text.lower()]
            return int(text) if typ == "int" else float(text)
        except KeyError:
            raise argparse.ArgumentTypeError(f"{name}={text!r} is not valid: allowed true or false") from None
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}={text!r} is not valid: allowed {s.describe()}") from None
    return parse


def _add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per config field, default None (meaning: keep the preset's or class default)."""
    group = parser.add_argument_group(f"{cls.__name__} ({cls.__doc__.splitlines()[0] if cls.__doc__ else ''})")
    for f in dataclasses.fields(cls):
        s: Spec = f.metadata["spec"]
        default = f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        group.add_argument(_flag(f.name), *ALIASES.get(f.name, []), dest=f.name, default=None,
                           type=_parser_type(f.name, str(f.type), s), metavar=f.name.split("_")[-1].upper(),
                           help=f"{s.help} ({s.describe()}; default {shown})")


def _overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The config fields given on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def configs_from_args(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    """The model config (preset plus flags) and the train config; ValueError names a bad field."""
    model_config = preset(args.preset).replace(**_overrides(args, ModelConfig))
    return model_config, TrainConfig(**_overrides(args, TrainConfig))


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for every command."""
    parser = argparse.ArgumentParser(prog="python -m deconv", description="Deconv Lab: train, evaluate and use a "
                                     "deconvolutional network on CIFAR-10.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a network and save the run directory")
    p.add_argument("--data-dir", help="CIFAR-10 folder (default: DECONV_DATA_DIR, the Keras cache, or download)")
    p.add_argument("--preset", choices=list(PRESETS), default="default", help="starting architecture")
    _add_config_flags(p, ModelConfig)
    _add_config_flags(p, TrainConfig)
    p.add_argument("--out", required=True, help="run directory to create (must not exist or be empty)")
    p.add_argument("--progress", help="append one JSON line per event to this file")
    p.add_argument("--owner", default="", help="who asked for this training (the app passes the browser's id); "
                                               "saved in meta.json")
    p.add_argument("--strategy", choices=STRATEGIES, default="none",
                   help="none: this process as usual; mirrored: tf.distribute.MirroredStrategy over all local GPUs "
                        "(or CPUs); multiworker: tf.distribute.MultiWorkerMirroredStrategy, one process per worker "
                        "configured by TF_CONFIG, the chief saves --out (default none)")

    p = sub.add_parser("evaluate", help="accuracy of a saved run on test_batch")
    p.add_argument("run_dir")
    p.add_argument("--data-dir")
    p.add_argument("--limit", type=int, help="only the first N test images")

    p = sub.add_parser("classify", help="top-k classes of image files")
    p.add_argument("run_dir")
    p.add_argument("images", nargs="+")
    p.add_argument("--top", type=int, default=5, choices=range(1, 11), metavar="K", help="labels per image (1-10)")

    sub.add_parser("worker", help="(for the app) import TensorFlow, then run the one command read from stdin")

    p = sub.add_parser("describe", help="layers, parameters and FLOPs of an architecture, without training")
    p.add_argument("--preset", choices=list(PRESETS), default="default")
    _add_config_flags(p, ModelConfig)
    return parser


def _emit(obj: dict[str, Any], out: TextIO = sys.stdout) -> None:
    """One JSON line."""
    out.write(json.dumps(obj) + "\n")
    out.flush()


def _fail(message: str, code: int = 1) -> int:
    """Print an error line on stderr and return the exit code."""
    print(f"error: {message}", file=sys.stderr)
    return code


class ProgressLog:
    """Writes training events as JSON lines to a file and as short lines for people on stderr."""

    def __init__(self, path: str | None) -> None:
        self.file = open(path, "a", buffering=1) if path else None

    def __call__(self, event: dict[str, Any]) -> None:
        event = {"time": time.time(), **event}
        if self.file:
            self.file.write(json.dumps(event) + "\n")
        kind = event["event"]
        if kind == "epoch":
            val = f", val_accuracy {event['val_accuracy']:.3f}" if "val_accuracy" in event else ""
            print(f"epoch {event['epoch']}/{event['epochs']}: loss {event['loss']:.3f}, accuracy "
                  f"{event['accuracy']:.3f}{val} ({event['seconds']:.1f} s)", file=sys.stderr)
        elif kind in ("start", "end", "status"):
            print(" ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "time")), file=sys.stderr)

    def close(self) -> None:
        """Close the file."""
        if self.file:
            self.file.close()


def tf_config_problem(text: str | None) -> str | None:
    """What is wrong with TF_CONFIG for multi-worker training, or None when it names a cluster and this worker in it."""
    if not text or not text.strip():
        return "TF_CONFIG is not set"
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        return f"TF_CONFIG is not valid JSON ({e})"
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or ("worker" not in cluster and "chief" not in cluster):
        return 'TF_CONFIG has no "cluster" with a "worker" list'
    for job, hosts in cluster.items():
        if job not in ("chief", "worker"):
            return f'TF_CONFIG cluster has a "{job}" job: multi-worker training uses only "chief" and "worker"'
        addresses = hosts if isinstance(hosts, list) else []
        if not addresses or not all(isinstance(a, str) and re.fullmatch(r"\S+:\d+", a) for a in addresses):
            return f'TF_CONFIG cluster "{job}" must be a list of "host:port" addresses'
    if len(cluster.get("chief", [])) > 1:
        return 'TF_CONFIG cluster "chief" must hold one address'
    task = config.get("task")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        types = " or ".join(map(json.dumps, cluster))
        return f'TF_CONFIG "task" must name this worker: {{"type": {types}, "index": N}}'
    index, count = task.get("index", 0), len(cluster[task["type"]])
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        return f'TF_CONFIG task index {json.dumps(index)} is not a whole number from 0 to {count - 1}'
    return None


def cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Train, save the run, print the summary JSON line."""
    try:
        model_config, train_config = configs_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    if args.strategy == "multiworker" and (problem := tf_config_problem(os.environ.get("TF_CONFIG"))):
        return _fail(f"{problem}. --strategy multiworker needs TF_CONFIG set on every worker to JSON such as "
                     f"{TF_CONFIG_EXAMPLE}: the same cluster everywhere, each worker's own task index", 2)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        return _fail(f"{out} already exists and is not empty: choose another --out", 2)
    install_stop_handlers()
    try:
        log = ProgressLog(args.progress)
    except OSError as e:
        return _fail(f"cannot write the progress file {args.progress}: {e.strerror or e}", 2)
    try:
        return _train(model_config, train_config, args, out, STOP, log)
    finally:
        log.close()


def _train(model_config: ModelConfig, train_config: TrainConfig, args: argparse.Namespace, out: Path,
           stop: threading.Event, log: ProgressLog) -> int:
    """The body of `train` once configs are valid."""
    from deconv import analysis, data, runs

    def end(status: str, message: str, code: int, hint: str = "", **extra: Any) -> int:
        log({"event": "end", **extra, "status": status, "message": message})
        if code:
            print(f"error: {message}{hint}", file=sys.stderr)
        return code

    log({"event": "status", "message": "loading CIFAR-10"})
    last = [0.0]

    def download_progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] > 0.5:
            last[0] = time.monotonic()
            log({"event": "download", "done": done, "total": total})

    try:
        dataset = data.load_dataset(train_config, args.data_dir, download_progress)
    except data.DataError as e:
        return end("error", str(e), 1, hint=" (or pass --data-dir)")
    if stop.is_set():
        return end("cancelled", "stopped before training began; nothing was saved", 0)
    log({"event": "status", "message": "building the model", "data": dataset.source.describe()})
    from deconv import train as training
    from deconv.cost import describe

    import tensorflow as tf

    try:
        strategy = make_strategy(args.strategy)
    except (tf.errors.OpError, RuntimeError, ValueError) as e:  # a TF_CONFIG address that cannot be served, say
        hint = "; is this worker's TF_CONFIG address on this machine, its port free?"
        return end("error", f"cannot start the {args.strategy} strategy: {_first_line(e)}"
                            f"{hint if args.strategy == 'multiworker' else ''}", 1)
    install_stop_handlers()  # the multi-worker runtime takes SIGTERM for its own preemption notice: take it back
    wall = time.time()
    try:
        result = training.train(model_config, train_config, dataset, log, stop, strategy=strategy)
    except (tf.errors.OpError, MemoryError) as e:  # out of memory, or an op the machine cannot run
        return end("error", f"training failed: {_first_line(e)}; try a smaller model or batch size", 1)
    code = 1 if result.status == "nan" else 0
    if strategy is not None and not strategy.extended.should_checkpoint:  # TF's rule: only the chief saves
        message = f"{result.message}; the chief worker saves the run"
        end(result.status, message, code)
        _emit({"run_dir": None, "status": result.status, "message": message, "replicas": result.extra["replicas"]})
        return code
    cost = describe(model_config)
    log({"event": "status", "message": "checking the model on its validation images"})
    rep = validation_report(result, dataset, cost)
    last_val = final_val_accuracy(result, rep, len(dataset.x_val))
    meta = {"status": result.status, "message": result.message, "train_seconds": result.train_seconds,
            "wall_seconds": time.time() - wall, "epochs_completed": sum(not e.get("partial") for e in result.history),
            "params": cost.params, "flops": cost.flops, "label_names": dataset.label_names,
            "data": {"path": str(dataset.source.path), "found_by": dataset.source.how,
                     "train_size": len(dataset.x_train), "val_size": len(dataset.x_val)},
            "seed": train_config.seed, "val_accuracy": last_val, "strategy": args.strategy, "owner": args.owner,
            **result.extra}
    log({"event": "status", "message": "saving the run"})
    try:
        runs.save_run(out, result.model, model_config, train_config, result.history, meta,
                      {analysis.REPORT_FILE: rep.to_json()})
    except runs.RunError as e:
        return end("error", f"{result.message}, but {e}", 1)
    summary = {"run_dir": str(out), "status": result.status, "message": result.message,
               "epochs": meta["epochs_completed"], "train_seconds": round(result.train_seconds, 3),
               "val_accuracy": last_val, "params": cost.params}
    end(result.status, result.message, code, **{k: v for k, v in summary.items() if k not in ("status", "message")})
    _emit(summary)
    return code


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message (TensorFlow's can run to pages)."""
    return (getattr(e, "message", None) or str(e) or type(e).__name__).strip().splitlines()[0][:300]


def make_strategy(name: str) -> Any:
    """TensorFlow's distribution strategy called `name`, or None for "none"."""
    import tensorflow as tf

    if name == "mirrored":  # all local GPUs, else all local CPUs (MirroredStrategy() alone would take only CPU:0)
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multiworker":  # the cluster and this worker's place in it come from TF_CONFIG
        return tf.distribute.MultiWorkerMirroredStrategy()
    return None


REPORT_IMAGES_HEAVY = 100  # a model above HEAVY_FLOPS is checked on this many validation images, not all


def validation_report(result: Any, dataset: Any, cost: Any) -> Any:
    """The saved weights' confusion matrix and mistakes, computed here in the trainer (never in the app's server)."""
    from deconv import analysis
    from deconv.cost import HEAVY_FLOPS
    from deconv.train import even_batch, predict

    n = REPORT_IMAGES_HEAVY if cost.flops > HEAVY_FLOPS else len(dataset.x_val)
    x, y = dataset.x_val[:n], dataset.y_val[:n]
    batch = even_batch(n, cost.eval_batch())  # one batch shape: the predict step compiles once (0.9 s, not 1.8 s)
    return analysis.report(predict(result.model, x, batch), y, dataset.label_names)


def final_val_accuracy(result: Any, rep: Any, val_size: int) -> float | None:
    """Validation accuracy of the weights being saved: the last epoch's, or the report's after a stop."""
    last = result.history[-1] if result.history else {}
    if "val_accuracy" in last:
        return last["val_accuracy"]
    if result.status == "nan" or rep.images < val_size:
        return None  # weights restored from an earlier epoch, or only part of the images checked
    return rep.accuracy


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Accuracy and loss of a run on test_batch."""
    from deconv import data, runs
    from deconv.train import evaluate

    if args.limit is not None and args.limit < 1:
        return _fail("--limit must be at least 1", 2)
    try:
        model = runs.load_model(args.run_dir)
        source = data.get_data(args.data_dir)
        x, y = data.read_test(source)
    except (runs.RunError, data.DataError) as e:
        return _fail(str(e))
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    _emit(evaluate(model, x, y))
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    """One JSON line per image with its top-k labels, or its error."""
    from deconv import inference, runs
    from deconv.train import predict

    try:
        info = runs.read_run(args.run_dir)
        model = runs.load_model(args.run_dir)
    except runs.RunError as e:
        return _fail(str(e))
    names = inference.label_names_of(info.meta)
    ok = True
    for path in args.images:
        try:
            x = inference.prepare(path)
        except inference.ImageError as e:
            ok = False
            _emit({"image": path, "error": f"{Path(path).name}: {e}"})
            continue
        probs = predict(model, x[None])[0]
        _emit({"image": path, "top": inference.top_k(probs, names, args.top).as_json()})
    return 0 if ok else 1


def cmd_describe(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Parameters, FLOPs and layers of an architecture."""
    from deconv.cost import describe

    try:
        config = preset(args.preset).replace(**_overrides(args, ModelConfig))
    except ValueError as e:
        parser.error(str(e))
    cost = describe(config)
    _emit({"params": cost.params, "flops": cost.flops, "activation_bytes": cost.activation_bytes,
           "config": config.to_dict(),
           "layers": [{"name": c.name, "type": c.kind, "output_shape": list(c.output_shape), "params": c.params,
                       "flops": c.flops} for c in cost.layers]})
    return 0


def cmd_worker() -> int:
    """A warm process for the app: import TensorFlow now, then run one job read as a JSON line from stdin."""
    install_stop_handlers()  # a stop that arrives before the job starts still ends it cleanly
    import deconv.train  # noqa: F401  (the slow import, done before the job arrives)

    line = sys.stdin.readline()
    if not line.strip():
        return 0
    job = json.loads(line)
    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    return main(job["argv"])


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    watch_lifeline()  # started by the app's JobManager: end with its server (first thing, before TensorFlow loads)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        return cmd_train(args, parser)
    if args.command == "evaluate":
        return cmd_evaluate(args)
    if args.command == "classify":
        return cmd_classify(args)
    if args.command == "worker":
        return cmd_worker()
    return cmd_describe(args, parser)
