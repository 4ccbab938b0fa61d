"""`python -m deconv` as a script would use it: JSON out, progress file, signals, exit codes, no tracebacks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deconv import runs, samples
from deconv.cli import build_parser
from deconv.samples import write_cifar

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--widths", "8", "--train-size", "300", "--val-size", "100", "--batch-size", "20"]


def cli(*args: str, **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deconv", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, **kw)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_describe_prints_params_flops_and_layers() -> None:
    out = last_json(cli("describe", "--preset", "article").stdout)
    assert out["params"] == 84_325_418 and out["flops"] > 11e9
    assert out["layers"][-1] == {"name": "classifier", "type": "Dense", "output_shape": [10], "params": 83_886_090,
                                 "flops": 2 * 83_886_080}
    assert last_json(cli("describe", "--widths", "16,32").stdout)["config"]["widths"] == [16, 32]


@pytest.mark.parametrize("args, words", [
    (["describe", "--widths", "4"], "widths=4 is out of range: allowed 1 to 4 values, each 8 to 256"),
    (["describe", "--widths", "a,b"], "widths='a,b' is not valid"),
    (["describe", "--head", "dense"], "head='dense' is not valid: allowed one of adaptive, flatten"),
    (["train", "--out", "x", "--epochs", "0"], "epochs=0 is out of range: allowed 1 to 200"),
    (["train", "--out", "x", "--lr", "fast"], "learning_rate='fast' is not valid"),
    (["train", "--out", "x", "--preset", "huge"], "invalid choice: 'huge'"),
    (["train"], "the following arguments are required: --out"),
    (["train", "--out", "x", "--augment", "maybe"], "augment='maybe' is not valid: allowed true or false"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_flags_exit_2_with_usage_and_the_field(args: list[str], words: str) -> None:
    r = cli(*args)
    assert r.returncode == 2 and "usage:" in r.stderr and words in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    data_dir = write_cifar(tmp / "data")
    run_dir, progress = tmp / "run", tmp / "progress.jsonl"
    r = cli("train", "--data-dir", str(data_dir), *SMALL, "--epochs", "2", "--out", str(run_dir),
            "--progress", str(progress), "--owner=-browser")
    assert r.returncode == 0, r.stderr
    summary = last_json(r.stdout)
    assert summary["run_dir"] == str(run_dir) and summary["epochs"] == 2 and summary["status"] == "finished"
    assert summary["train_seconds"] > 0 and summary["val_accuracy"] > 0.2 and summary["params"] > 0
    events = [json.loads(line) for line in progress.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("epoch") == 2 and kinds[-1] == "end" and events[-1]["status"] == "finished"
    assert "epoch 2/2" in r.stderr
    return run_dir


def test_train_writes_a_run_and_a_progress_file(trained_run: Path) -> None:
    assert sorted(p.name for p in trained_run.iterdir()) == ["config.json", "history.csv", "history.json", "meta.json",
                                                             "model.keras", "report.json", "tensorboard"]
    assert len(runs.log_files(trained_run)) == 4  # history.csv, TensorBoard's train and validation files, the images


def test_the_run_records_who_trained_it(trained_run: Path, tmp_path: Path) -> None:
    assert json.loads((trained_run / "meta.json").read_text())["owner"] == "-browser"
    args = build_parser().parse_args(["train", "--out", str(tmp_path / "run")])
    assert args.owner == ""  # trained from a shell: nobody in particular


def test_the_trainer_saves_the_validation_report_of_the_saved_weights(trained_run: Path) -> None:
    from deconv import analysis, runs

    rep, info = analysis.read_report(trained_run), runs.read_run(trained_run)
    assert rep.images == 100 and rep.accuracy == pytest.approx(info.val_accuracy, abs=1e-6)
    assert rep.matrix.sum(1).tolist() == [10] * 10  # a stratified draw: 10 validation images per class
    assert len(rep.mistakes) == min(analysis.MISTAKES_KEPT, 100 - int(rep.matrix.trace()))


def test_the_same_seed_trains_the_same_network_in_another_process(trained_run: Path, tmp_path: Path) -> None:
    data_dir = trained_run.parent / "data"
    r = cli("train", "--data-dir", str(data_dir), *SMALL, "--epochs", "2", "--out", str(tmp_path / "again"))
    assert r.returncode == 0, r.stderr
    first, second = (json.loads((d / "history.json").read_text()) for d in (trained_run, tmp_path / "again"))
    figures = ("loss", "accuracy", "val_loss", "val_accuracy")
    assert [[e[k] for k in figures] for e in first] == [[e[k] for k in figures] for e in second]



def test_train_refuses_an_existing_run_dir(trained_run: Path) -> None:
    r = cli("train", "--out", str(trained_run), *SMALL)
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr


def test_evaluate(trained_run: Path) -> None:
    data_dir = trained_run.parent / "data"
    out = last_json(cli("evaluate", str(trained_run), "--data-dir", str(data_dir), "--limit", "50").stdout)
    assert out["n"] == 50 and 0 <= out["accuracy"] <= 1 and out["loss"] > 0


def test_classify_good_and_bad_images(trained_run: Path, tmp_path: Path) -> None:
    good, bad = tmp_path / "photo.jpg", tmp_path / "notes.png"
    good.write_bytes(samples.good()["photo.jpg"])
    bad.write_bytes(b"just text")
    r = cli("classify", str(trained_run), str(good), str(bad), str(tmp_path / "missing.png"), "--top", "3")
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert lines[0]["image"] == str(good) and len(lines[0]["top"]) == 3
    assert abs(sum(t["probability"] for t in last_json(cli("classify", str(trained_run), str(good),
                                                            "--top", "10").stdout)["top"]) - 1) < 1e-3
    assert "not an image" in lines[1]["error"] and "cannot read" in lines[2]["error"]
    assert cli("classify", str(trained_run), str(good)).returncode == 0


def test_classify_the_whole_bad_input_corpus_in_one_call(trained_run: Path, tmp_path: Path) -> None:
    files = {**samples.bad(), **samples.good()}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    r = cli("classify", str(trained_run), *(str(tmp_path / name) for name in files))
    assert r.returncode == 1 and "Traceback" not in r.stderr  # 1: some files could not be classified
    lines = {Path(line["image"]).name: line for line in map(json.loads, r.stdout.splitlines())}
    assert sorted(lines) == sorted(files)
    assert all("error" in lines[name] and len(lines[name]["error"]) > 10 for name in samples.bad())
    assert all(len(lines[name]["top"]) == 5 for name in samples.good())


def test_classify_with_a_bad_run_dir_says_so(tmp_path: Path) -> None:
    r = cli("classify", str(tmp_path), str(tmp_path / "x.png"))
    assert r.returncode == 1 and "model.keras is missing" in r.stderr and "Traceback" not in r.stderr


def test_missing_dataset_says_what_to_do(tmp_path: Path) -> None:
    r = cli("train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"))
    assert r.returncode == 1 and "does not hold CIFAR-10" in r.stderr and "Traceback" not in r.stderr


def test_sigterm_stops_after_the_current_batch_and_saves(trained_run: Path, tmp_path: Path) -> None:
    data_dir = trained_run.parent / "data"
    progress = tmp_path / "p.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "deconv", "train", "--data-dir", str(data_dir), *SMALL,
                             "--epochs", "200", "--out", str(tmp_path / "run"), "--progress", str(progress)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not progress.exists() or '"epoch"' not in progress.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    sent = time.time()
    out, err = proc.communicate(timeout=60)
    assert time.time() - sent < 20
    assert proc.returncode == 0, err
    summary = last_json(out)
    assert summary["status"] == "stopped" and (tmp_path / "run" / "model.keras").exists()
    assert json.loads(progress.read_text().splitlines()[-1])["status"] == "stopped"
