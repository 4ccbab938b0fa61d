"""One experiment end to end: the data, the training, the validation report, the typed metadata and the saved run.

`python -m deconv train` and the app's warm workers both call `run`; nothing here parses arguments or
prints: events go to the caller's sink, and the result is a typed `Summary`.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from deconv.config import ModelConfig, TrainConfig
from deconv.distribute import STRATEGIES

Event = dict[str, Any]
EventSink = Callable[[Event], None]
REPORT_IMAGES_HEAVY = 100  # a model above cost.HEAVY_FLOPS is checked on this many validation images, not all


@dataclass(frozen=True)
class Experiment:
    """What to train and where to save it: both configs, the run folder, the data folder, who asked, the strategy."""

    model: ModelConfig
    train: TrainConfig
    out: Path
    data_dir: str | None = None  # None: DECONV_DATA_DIR, the Keras cache, or a download
    owner: str = ""  # the browser id that asked (the app), saved in meta.json; empty: the operator
    strategy: str = "none"  # one of distribute.STRATEGIES
    optimizer_state: bool = True  # False: model.keras keeps the weights only (a model to ship, a third of the size)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r} is not allowed: must be one of {', '.join(STRATEGIES)}")
        object.__setattr__(self, "out", Path(self.out))

    def to_json(self) -> dict[str, Any]:
        """A plain JSON-ready dict (the app hands it to a worker process)."""
        return {"model": self.model.to_dict(), "train": self.train.to_dict(), "out": str(self.out),
                "data_dir": self.data_dir, "owner": self.owner, "strategy": self.strategy,
                "optimizer_state": self.optimizer_state}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Experiment":
        """The experiment `to_json` wrote; ValueError names a bad field."""
        return cls(ModelConfig.from_dict(data["model"]), TrainConfig.from_dict(data["train"]), Path(data["out"]),
                   data.get("data_dir"), str(data.get("owner", "")), data.get("strategy", "none"),
                   bool(data.get("optimizer_state", True)))


@dataclass(frozen=True)
class Summary:
    """How an experiment ended: finished, stopped, nan, cancelled or error, with what was saved."""

    status: str
    message: str
    run_dir: Path | None = None  # None: nothing saved (an error, a stop before training, a worker that is not chief)
    epochs: int = 0
    train_seconds: float = 0.0
    val_accuracy: float | None = None
    params: int = 0
    replicas: int = 1
    cause: str = ""  # for an error: "data", "strategy", "training" or "save"

    @property
    def exit_code(self) -> int:
        """0 for a run that ended as asked (finished, stopped, cancelled), 1 for an error or a NaN loss."""
        return 1 if self.status in ("error", "nan") else 0

    def to_json(self) -> dict[str, Any]:
        """The summary line `python -m deconv train` prints."""
        return {"run_dir": str(self.run_dir) if self.run_dir else None, "status": self.status, "message": self.message,
                "epochs": self.epochs, "train_seconds": round(self.train_seconds, 3),
                "val_accuracy": self.val_accuracy, "params": self.params, "replicas": self.replicas}


def run(experiment: Experiment, sink: EventSink, stop: threading.Event, warm: Any = None) -> Summary:
    """Load the data, train, check the model on its validation images and save the run; every step is an event.

    `warm` (a train.WarmModel) is used when it was made for these settings: the training then starts at once.
    """
    from deconv import data

    with tempfile.TemporaryDirectory(prefix="deconv-logs-") as logs:  # history.csv and TensorBoard files, until saved
        summary = _run(experiment, sink, stop, data, warm, Path(logs))
    end = {k: v for k, v in summary.to_json().items() if k not in ("status", "message")} if summary.run_dir else {}
    sink({"event": "end", **end, "status": summary.status, "message": summary.message})
    return summary


def _run(experiment: Experiment, sink: EventSink, stop: threading.Event, data: Any, warm: Any, logs: Path) -> Summary:
    """The steps of `run`; returns as soon as one fails."""
    sink({"event": "status", "message": "loading CIFAR-10"})
    try:
        dataset = data.load_dataset(experiment.train, experiment.data_dir, _download_events(sink))
    except data.DataError as e:
        return Summary("error", str(e), cause="data")
    if stop.is_set():
        return Summary("cancelled", "stopped before training began; nothing was saved")
    sink({"event": "status", "message": "building the model", "data": dataset.source.describe()})
    import tensorflow as tf

    from deconv import analysis, distribute, runs, training_logs
    from deconv.cost import describe
    from deconv.train import train

    try:
        strategy = distribute.make_strategy(experiment.strategy)
    except (tf.errors.OpError, RuntimeError, ValueError) as e:  # a TF_CONFIG address that cannot be served, say
        hint = "; is this worker's TF_CONFIG address on this machine, its port free?"
        return Summary("error", f"cannot start the {experiment.strategy} strategy: {first_line(e)}"
                                f"{hint if experiment.strategy == 'multiworker' else ''}", cause="strategy")
    wall = time.time()
    try:
        result = train(experiment.model, experiment.train, dataset, sink, stop, strategy=strategy, warm=warm,
                       callbacks=training_logs.callbacks(logs, dataset.label_names))
    except (tf.errors.OpError, MemoryError) as e:  # out of memory, or an op the machine cannot run
        return Summary("error", f"training failed: {first_line(e)}; try a smaller model or batch size", cause="training")
    cost = describe(experiment.model)
    epochs = sum(not e.get("partial") for e in result.history)
    replicas = result.extra["replicas"]
    if not distribute.saves(strategy):
        return Summary(result.status, f"{result.message}; the chief worker saves the run", None, epochs,
                       result.train_seconds, params=cost.params, replicas=replicas)
    sink({"event": "status", "message": "checking the model on its validation images"})
    report = validation_report(result.model, dataset, cost)
    val_accuracy = final_val_accuracy(result, report, len(dataset.x_val))
    meta = runs.RunMeta(
        status=result.status, message=result.message, train_seconds=result.train_seconds,
        wall_seconds=time.time() - wall, epochs_completed=epochs, params=cost.params, flops=cost.flops,
        label_names=tuple(dataset.label_names), seed=experiment.train.seed, val_accuracy=val_accuracy,
        data=runs.DataInfo(str(dataset.source.path), dataset.source.how, len(dataset.x_train), len(dataset.x_val)),
        strategy=experiment.strategy, replicas=replicas, xla=result.extra["xla"], owner=experiment.owner)
    sink({"event": "status", "message": "saving the run"})
    try:
        runs.save_run(experiment.out, result.model, experiment.model, experiment.train, result.history, meta,
                      {analysis.REPORT_FILE: report.to_json()}, experiment.optimizer_state, logs)
    except runs.RunError as e:
        return Summary("error", f"{result.message}, but {e}", cause="save")
    return Summary(result.status, result.message, experiment.out, epochs, result.train_seconds, val_accuracy,
                   cost.params, replicas)


def _download_events(sink: EventSink) -> Callable[[int, int], None]:
    """A download-progress callback that sends at most two events a second."""
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] > 0.5:
            last[0] = time.monotonic()
            sink({"event": "download", "done": done, "total": total})
    return progress


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (TensorFlow's can run to pages)."""
    return (getattr(e, "message", None) or str(e) or type(e).__name__).strip().splitlines()[0][:300]


def validation_report(model: Any, dataset: Any, cost: Any) -> Any:
    """The saved weights' confusion matrix and mistakes, computed here in the trainer (never in the app's server)."""
    from deconv import analysis
    from deconv.cost import HEAVY_FLOPS
    from deconv.inference import even_batch, predict

    n = REPORT_IMAGES_HEAVY if cost.flops > HEAVY_FLOPS else len(dataset.x_val)
    x, y = dataset.x_val[:n], dataset.y_val[:n]
    batch = even_batch(n, cost.eval_batch())  # one batch shape: the predict step compiles once (0.9 s, not 1.8 s)
    return analysis.report(predict(model, x, batch), y, dataset.label_names)


def final_val_accuracy(result: Any, report: Any, val_size: int) -> float | None:
    """Validation accuracy of the weights being saved, as the app answers: the report's when it checked every
    validation image (it predicts as Classify does, with the mirror image when the network does so; Keras' epoch
    figure is one view); after a NaN loss, or for a report of part of the images, the last complete epoch's, if any."""
    if result.status != "nan" and report.images == val_size:
        return report.accuracy
    last = result.history[-1] if result.history else {}
    return last.get("val_accuracy")
