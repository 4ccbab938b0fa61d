"""The command line: `python -m deconv train|evaluate|classify|describe`.

Flags for configs are generated from the config classes, so their names, defaults and ranges
are the ones the app's sliders show. TensorFlow is imported only by commands that need it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from deconv.config import PRESETS, ModelConfig, Spec, TrainConfig, preset
from deconv.distribute import STRATEGIES, TF_CONFIG_EXAMPLE, tf_config_problem
from deconv.lifeline import watch_lifeline

ALIASES = {"learning_rate": ["--lr"]}
STOP = threading.Event()  # set by SIGINT/SIGTERM: training ends after its current batch
WARM_ENV = "DECONV_WARM_DEFAULT"  # 0: a worker does not compile the default network while it waits


def install_stop_handlers() -> None:
    """Make SIGINT and SIGTERM request a stop instead of killing the process."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: STOP.set())


def _flag(name: str) -> str:
    """--field-name for a config field."""
    return "--" + name.replace("_", "-")


def _parser_type(name: str, s: Spec) -> Callable[[str], Any]:
    """An argparse type: the field's own parser (`Spec.parse`), its error naming the field and what is allowed."""
    def parse(text: str) -> Any:
        try:
            return s.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{name}={text!r} is not valid: {e}") from None
    return parse


def _add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per config field, default None (meaning: keep the preset's or class default)."""
    group = parser.add_argument_group(f"{cls.__name__} ({cls.__doc__.splitlines()[0] if cls.__doc__ else ''})")
    for f in dataclasses.fields(cls):
        s: Spec = f.metadata["spec"]
        default = f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        group.add_argument(_flag(f.name), *ALIASES.get(f.name, []), dest=f.name, default=None,
                           type=_parser_type(f.name, s), metavar=f.name.split("_")[-1].upper(),
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
    p.add_argument("--weights-only", action="store_true",
                   help="save model.keras without the optimizer's state: a third of the size, for a model to ship")
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


def cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Check the arguments, then run the experiment they describe."""
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
    from deconv.experiment import Experiment

    experiment = Experiment(model_config, train_config, out, args.data_dir, args.owner, args.strategy,
                            optimizer_state=not args.weights_only)
    return train_experiment(experiment, args.progress, hint=" (or pass --data-dir)")


def train_experiment(experiment: Any, progress: str | None, hint: str = "", warm: Any = None) -> int:
    """Run an experiment with stop requests by signal and events logged; print its summary; the exit code."""
    from deconv import experiment as experiments

    install_stop_handlers()
    try:
        log = ProgressLog(progress)
    except OSError as e:
        return _fail(f"cannot write the progress file {progress}: {e.strerror or e}", 2)
    try:
        summary = experiments.run(experiment, log, STOP, warm)
    finally:
        log.close()
    if summary.status == "error":
        return _fail(summary.message + (hint if summary.cause == "data" else ""), summary.exit_code)
    if summary.status != "cancelled":
        _emit(summary.to_json())
    return summary.exit_code


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Accuracy and loss of a run on test_batch."""
    from deconv import data, runs
    from deconv.inference import evaluate

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
    from deconv import images, inference, runs

    try:
        info = runs.read_run(args.run_dir)
        model = runs.load_model(args.run_dir)
    except runs.RunError as e:
        return _fail(str(e))
    names = inference.label_names_of(info.meta)
    ok = True
    for path in args.images:
        try:
            x = images.prepare(path)
        except images.ImageError as e:
            ok = False
            _emit({"image": path, "error": f"{Path(path).name}: {e}"})
            continue
        probs = inference.predict(model, x[None])[0]
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
    """A warm process for the app: import TensorFlow now, then run the one experiment read as a JSON line on stdin."""
    install_stop_handlers()  # a stop that arrives before the job starts still ends it cleanly
    from deconv.experiment import Experiment
    from deconv.train import warm_up  # the slow import, done before the job arrives

    warm = None
    if os.environ.get(WARM_ENV, "1") != "0":  # ... and the default network's steps, compiled before it arrives
        try:
            model_config, train_config = preset("default"), TrainConfig()
            warm = warm_up(model_config, train_config, train_config.train_size, train_config.val_size)
        except Exception as e:  # noqa: BLE001  (not fatal: the job compiles its own steps)
            print(f"warning: could not prepare the default network ahead: {e}", file=sys.stderr)
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
    try:
        experiment = Experiment.from_json(job["experiment"])
    except (KeyError, TypeError, ValueError) as e:
        return _fail(f"the job is not a valid experiment: {e}", 2)
    return train_experiment(experiment, job["progress"], warm=warm)


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
