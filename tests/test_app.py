"""The Streamlit app through AppTest: every page, the cost table, training, stop, classify, runs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest
from streamlit.testing.v1 import AppTest

from deconv import runs, samples
from deconv.config import ModelConfig
from deconv.cost import describe

APP = str(Path(__file__).resolve().parent.parent / "app.py")
DEFAULT_PARAMS = describe(ModelConfig()).params
PAGES = ["pages/home.py", "pages/architecture.py", "pages/train.py", "pages/classify.py", "pages/runs.py"]


@pytest.fixture
def a_run(app_env: Path) -> Path:
    """A saved run to classify with: the one the training test made, or an untrained one saved now."""
    saved = runs.list_runs(app_env)[0]
    if saved:
        return saved[-1].path
    from deconv.model import build_model

    config = ModelConfig(widths=(8,))
    return runs.save_run(app_env / "untrained", build_model(config), config, at_config(epochs=1), [],
                         runs.RunMeta(val_accuracy=0.1))


def wait_job(predicate, timeout: float = 120) -> None:
    from pages.parts import server

    deadline = time.time() + timeout
    while time.time() < deadline:
        job = server.job_manager().jobs[-1] if server.job_manager().jobs else None
        if job is not None and predicate(job):
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the job")


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders_without_an_exception(app_env: Path, name: str, page) -> None:
    at = page(name)
    assert not at.exception and at.title[0].value


def test_home_shows_where_the_data_is(app_env: Path, page) -> None:
    at = page("pages/home.py")
    assert "CIFAR-10 found" in at.success[0].value and "DECONV_DATA_DIR" in at.success[0].value


def test_a_first_visit_has_the_reference_model_active_until_it_picks_another(app_env: Path, page) -> None:
    at = page("pages/classify.py")
    assert "Reference model" in at.sidebar.markdown[0].value and "unseen CIFAR-10 test images" in at.sidebar.markdown[0].value
    chooser = next(s for s in at.selectbox if s.label == "Model")
    assert chooser.value == "Reference model (shipped with the app)" and not at.exception
    assert "model" not in at.query_params  # the default: a shared link does not name it


def test_home_says_what_to_do_when_the_data_setting_is_wrong(app_env: Path, monkeypatch, page) -> None:
    monkeypatch.setenv("DECONV_DATA_DIR", "/nonexistent/cifar")
    at = page("pages/home.py")
    assert not at.exception and "does not hold CIFAR-10" in at.error[0].value


def test_a_width_slider_changes_the_parameter_count(app_env: Path, page) -> None:
    at = page("pages/architecture.py")
    before = metric(at, "Parameters")
    at.slider(key="w.model_config.width0").set_value(64).run()
    after = metric(at, "Parameters")
    assert before == f"{DEFAULT_PARAMS:,}" and int(after.replace(",", "")) > DEFAULT_PARAMS
    at.slider(key="w.model_config.blocks").set_value(1).run()
    # rescale, one block's conv (3 layers), the decoder's deconv and conv (6; no skip: no block map is 32x32), pool,
    # flatten, classifier
    assert len(at.dataframe[0].value) == 1 + 3 + 6 + 3


def test_the_article_preset_updates_the_table_and_warns_of_its_cost(app_env: Path, page) -> None:
    at = page("pages/architecture.py")
    assert not at.warning
    button(at, "The article's network").click().run()
    assert metric(at, "Parameters") == "84,325,418"
    assert "flatten" in at.dataframe[0].value["type"].str.lower().tolist()
    assert "slow to train here" in at.warning[0].value
    number, unit = metric(at, "Time per epoch").lstrip("~").split()  # about an hour measured (2.7 images/s)
    assert float(number.replace(",", "")) * {"s": 1 / 60, "min": 1, "h": 60}[unit] >= 30
    button(at, "Fast default").click().run()
    assert metric(at, "Parameters") == f"{DEFAULT_PARAMS:,}" and not at.warning


def test_an_impossible_combination_is_refused_with_a_reason(app_env: Path, page) -> None:
    at = page("pages/architecture.py")
    at.session_state["model_config"] = PAIRS  # the page has no switch for block deconvs yet
    at.run()
    at.slider(key="w.model_config.conv_stride").set_value(1).run()
    at.slider(key="w.model_config.deconv_stride").set_value(2).run()
    at.slider(key="w.model_config.blocks").set_value(4).run()
    assert "512x512" in at.error[0].value and at.session_state["model_config"].blocks == 3


PAIRS = ModelConfig(block_deconvs=True, up_blocks=0, downsample="stride")  # the earlier default: conv-deconv pairs


def small_training(at: AppTest, epochs: int) -> AppTest:
    at.session_state["model_config"] = ModelConfig(widths=(8,))
    at.run()
    at.slider(key="w.train_config.train_size").set_value(300).run()
    at.slider(key="w.train_config.val_size").set_value(100).run()
    at.slider(key="w.train_config.epochs").set_value(epochs).run()
    at.slider(key="w.train_config.batch_size").set_value(24).run()
    return at


def test_training_completes_with_curves_a_confusion_matrix_and_a_saved_run(app_env: Path, monkeypatch, page) -> None:
    at = small_training(page("pages/train.py"), epochs=2)
    button(at, "Train").click().run()
    assert button(at, "Train").disabled and button(at, "Stop")
    wait_job(lambda job: not job.active)

    def not_in_the_server(*args, **kw):
        raise AssertionError("the server loaded a model to draw the training's report")

    monkeypatch.setattr(runs, "load_model", not_in_the_server)  # the trainer's saved report is drawn instead
    at.run()
    assert not at.exception
    assert at.success[0].value == "Trained 2 epochs."
    assert metric(at, "Epochs completed") == "2 of 2" and metric(at, "Validation accuracy").endswith("%")
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 3  # curves, confusion matrix, per-class accuracy
    assert len(charts[0]["data"][0]["x"]) == 2  # two epochs of training loss
    assert any("Most confidently wrong" in m.value for m in at.markdown)
    captions = [c for img in at.get("image") for c in img.captions]
    assert len(captions) == 8 and all("% (is " in c for c in captions)
    saved, broken = runs.list_runs(app_env)
    assert len(saved) == 1 and not broken and saved[0].model_config == ModelConfig(widths=(8,))
    assert at.session_state["active_run"] == str(saved[0].path)
    assert not any("previous run" in i.value for i in at.info)
    at.slider(key="w.train_config.epochs").set_value(3).run()  # new settings: the results are the previous run's
    assert "**Your previous run**" in at.info[0].value and "epochs 2 (now 3)" in at.info[0].value


def test_a_training_that_does_not_fit_in_memory_is_refused_before_it_starts(app_env: Path, monkeypatch, page) -> None:
    from deconv import jobs

    monkeypatch.setattr(jobs, "available_memory_bytes", lambda: 2**29)  # 512 MiB free
    at = small_training(page("pages/train.py"), epochs=1)
    assert "Not enough memory for this training" in at.error[0].value and "of the 0.5 GiB" in at.error[0].value
    assert button(at, "Train").disabled
    monkeypatch.setattr(jobs, "available_memory_bytes", lambda: 2**40)
    at.run()
    assert not at.error and not button(at, "Train").disabled


def test_the_page_says_how_many_images_an_epoch_really_uses(app_env: Path, page) -> None:
    at = small_training(page("pages/train.py"), epochs=1)  # 300 images in batches of 24: 288 used, close enough
    assert not any("Each epoch uses" in c.value for c in at.caption)
    at.slider(key="w.train_config.batch_size").set_value(256).run()  # one whole batch
    assert any("Each epoch uses 256 of the 300" in c.value for c in at.caption)
    at.slider(key="w.train_config.train_size").set_value(200).run()
    at.slider(key="w.train_config.batch_size").set_value(40).run()  # 5 x 40: every image
    assert not any("Each epoch uses" in c.value for c in at.caption)


def test_a_runs_folder_that_cannot_be_written_still_shows_the_training_result(app_env: Path, monkeypatch, page) -> None:
    blocked = app_env.parent / "runs-is-a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("DECONV_RUNS_DIR", str(blocked))
    at = small_training(page("pages/train.py"), epochs=1)
    button(at, "Train").click().run()
    assert not at.exception and "it is a file, not a folder" in at.warning[0].value
    wait_job(lambda job: not job.active)
    at.run()
    assert not at.exception
    assert "Trained 1 epoch, but" in at.error[0].value and "not a folder" in at.error[0].value
    assert metric(at, "Validation accuracy").endswith("%") and metric(at, "Epochs completed") == "1 of 1"
    assert len(at.get("plotly_chart")) == 1  # the learning curves
    assert blocked.read_text() == "not a folder"
    for name in PAGES:  # and every page still works
        assert not page(name).exception


def test_stop_ends_training_early_and_keeps_the_model(app_env: Path, page) -> None:
    at = small_training(page("pages/train.py"), epochs=200)
    button(at, "Train").click().run()
    wait_job(lambda job: job.newest("batch") is not None)
    button(at, "Stop").click().run()
    wait_job(lambda job: not job.active, timeout=30)
    at.run()
    assert "Stopped by request in epoch" in at.info[0].value
    from pages.parts import server

    job = server.job_manager().jobs[-1]
    assert job.state == "stopped" and (job.run_dir / "model.keras").exists()
    info = runs.read_run(job.run_dir)
    assert info.history[-1].get("partial") and info.val_accuracy is not None  # the saved weights were validated
    assert metric(at, "Validation accuracy") == f"{info.val_accuracy:.1%}"


def test_classify_uploads_a_good_and_a_bad_file(app_env: Path, a_run: Path, page) -> None:
    at = page("pages/classify.py")
    at.file_uploader[0].set_value([("photo.png", samples.good()["photo.png"], "image/png"),
                                   ("notes.png", b"just some text", "image/png")]).run()
    assert not at.exception
    assert "notes.png" in at.error[0].value and "not an image" in at.error[0].value
    table = at.dataframe[0].value
    assert len(table) == 10 and abs(table["probability"].sum() - 1) < 1e-4
    assert [c.key for c in at.get("plotly_chart") if not c.key.startswith("top-test")] == ["top-upload-0-photo.png"]


def test_every_file_of_the_bad_input_corpus_gets_a_message_or_a_prediction(app_env: Path, a_run: Path, page) -> None:
    import resource

    good, bad = samples.good(), samples.bad()
    at = page("pages/classify.py")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    at.file_uploader[0].set_value([(name, content, "image/png") for name, content in {**bad, **good}.items()]).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == len(bad) and all(f"**{name}** cannot be classified" in e for name, e in zip(bad, errors))
    assert "pixels" in errors[list(bad).index("bomb.png")]
    shown = sorted(c.key.removeprefix("top-upload-").split("-", 1)[1] for c in at.get("plotly_chart")
                   if c.key.startswith("top-upload-"))
    assert shown == sorted(good)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 300, f"the server's peak memory grew by {grown_mb:.0f} MB for {len(good) + len(bad)} small files"
    again = page("pages/classify.py")  # the server still serves
    assert not again.exception and again.file_uploader


def test_classify_cifar_test_images_with_their_true_labels(app_env: Path, a_run: Path, page) -> None:
    at = page("pages/classify.py")
    charts = [c for c in at.get("plotly_chart") if c.key.startswith("top-test-")]
    assert len(charts) == 8  # eight random test images, each with its top-5 chart
    assert sum("true:" in m.value or "✓" in m.value for m in at.markdown) == 8


def test_runs_page_lists_runs_and_reports_a_broken_one(app_env: Path, a_run: Path, page) -> None:
    (app_env / "broken-run").mkdir(parents=True, exist_ok=True)
    (app_env / "broken-run" / "config.json").write_text("{}")  # a run whose model.keras is gone
    at = page("pages/runs.py")
    assert not at.exception
    assert "broken-run" in at.error[0].value and "model.keras is missing" in at.error[0].value
    assert len(at.dataframe[0].value) == len(runs.list_runs(app_env)[0]) >= 1
    assert f"tensorboard --logdir {app_env.resolve()}" in [c.value for c in at.code]  # how to open them all
    assert "Run folder (zip)" in [b.proto.label for b in at.get("download_button")]


@pytest.mark.parametrize("name", ["pages/architecture.py", "pages/train.py"])
def test_the_training_script_of_the_current_settings_downloads_from_architecture_and_train(app_env: Path, page,
                                                                                           name: str) -> None:
    at = page(name)
    script = next(b for b in at.get("download_button") if b.proto.label == "Training script (.py)")
    assert not at.exception and script.proto.url.endswith(".py") and "python deconv_lab_train.py" in script.proto.help


def test_a_session_waiting_for_the_slot_sees_its_place_and_can_cancel(app_env: Path, page) -> None:
    from pages.parts import server

    manager = server.job_manager()
    other = manager.submit("another visitor", ModelConfig(widths=(8,)), at_config(epochs=200), app_env / "other-run")
    try:
        at = small_training(page("pages/train.py"), epochs=1)
        button(at, "Train").click().run()
        assert "Waiting for a training slot: number 1 in the queue" in at.info[0].value
        assert re.search(r"it should start in about \d+ (s|min)\.", at.info[0].value)  # the job ahead's estimate
        button(at, "Cancel").click().run()
        at.run()
        assert "cancelled while waiting" in at.info[0].value.lower()
        assert not button(at, "Train").disabled
    finally:
        manager.stop(other)
        wait_job(lambda job: not other.active, timeout=60)


def at_config(epochs: int):
    from deconv.config import TrainConfig

    return TrainConfig(train_size=300, val_size=100, epochs=epochs, batch_size=24)


def test_a_refreshed_page_finds_its_training_by_the_browsers_cookie_and_never_puts_it_in_the_url(
        app_env: Path, page, monkeypatch: pytest.MonkeyPatch) -> None:
    from deconv import owners
    from pages.parts import server, state

    at = small_training(page("pages/train.py"), epochs=200)
    button(at, "Train").click().run()
    token, owner = at.session_state[state.TOKEN], at.session_state[state.OWNER]
    assert owner == owners.owner_key(token, owners.server_secret(app_env)) != token
    assert token not in str(at.query_params) and "client" not in at.query_params
    wait_job(lambda job: job.newest("batch") is not None)
    monkeypatch.setattr(state, "browser_cookie", lambda: token)  # a refresh: a new session, the same cookie
    again = AppTest.from_file(APP, default_timeout=120).run()
    again.switch_page("pages/train.py").run()
    assert again.session_state[state.OWNER] == owner and button(again, "Stop")
    button(again, "Stop").click().run()
    wait_job(lambda job: not job.active, timeout=30)
    assert server.job_manager().jobs[-1].owner == owner


def test_settings_come_from_the_url_clamped_with_a_note_and_a_link_shares_them(app_env: Path) -> None:
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"widths": "16,32", "epochs": "1000", "head": "dense", "learning_rate": "0.002"})
    at.run()
    assert not at.exception
    note = at.warning[0].value
    assert "epochs=1000 is not allowed (1 to 200): using 200" in note and "head='dense'" in note
    assert at.session_state["model_config"] == ModelConfig(widths=(16, 32))
    train = at.session_state["train_config"]
    assert train.epochs == 200 and train.learning_rate == 0.002
    params = {k: v[0] if isinstance(v, list) else v for k, v in at.query_params.items()}
    assert params == {"widths": "16,32", "epochs": "200", "learning_rate": "0.002"}
    share = next(c.value for c in at.get("code"))
    assert share.endswith("?widths=16,32&epochs=200&learning_rate=0.002")  # and no browser id
    at.switch_page("pages/architecture.py").run()
    assert not at.warning  # the note is shown once
    assert metric(at, "Parameters") == f"{describe(ModelConfig(widths=(16, 32))).params:,}"
    at.slider(key="w.model_config.width0").set_value(24).run()
    assert at.query_params["widths"] in ("24,32", ["24,32"])
    assert "?widths=24,32&" in next(c.value for c in at.get("code"))


def test_the_deconv_shape_calculator_warns_of_uneven_overlap(app_env: Path, page) -> None:
    at = page("pages/architecture.py")
    assert list(at.dataframe[1].value["output"]) == ["8x8"]  # the default's one deconv: the decoder's, 4x4 -> 8x8
    at.session_state["model_config"] = PAIRS  # the page has no switch for block deconvs yet
    at.run()
    table = at.dataframe[1].value
    assert list(table["output"]) == ["16x16", "8x8", "4x4"] and set(table["overlap"]) == {"even"}
    assert not at.warning
    at.slider(key="w.model_config.deconv_stride").set_value(2).run()
    table = at.dataframe[1].value
    assert list(table["input"]) == ["16x16", "16x16", "16x16"] and list(table["output"]) == ["32x32"] * 3
    assert not at.warning  # the default 2x2 kernel at stride 2: every output pixel gets one input
    at.slider(key="w.model_config.deconv_kernel").set_value(3).run()
    assert "Checkerboard risk" in at.warning[0].value and "kernel 3 is not divisible by stride 2" in at.warning[0].value
    at.slider(key="w.model_config.deconv_kernel").set_value(4).run()
    assert not at.warning and set(at.dataframe[1].value["overlap"]) == {"even"}


def test_runs_page_imports_a_zipped_run_and_refuses_a_bad_zip(app_env: Path, a_run: Path, tmp_path: Path,
                                                               monkeypatch, page) -> None:
    import io
    import zipfile

    from pages.parts import text

    saved = runs.list_runs(app_env)[0]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for file in runs.FILES:
            z.write(saved[0].path / file, f"from-cluster/{file}")
    at = page("pages/runs.py")
    at.file_uploader(key="import.zip").set_value(("from-cluster.zip", buf.getvalue(), "application/zip")).run()
    button(at, "Import").click().run()
    assert not at.exception and "Imported as **from-cluster**" in at.success[0].value
    assert (app_env / "from-cluster" / "model.keras").exists()
    at.file_uploader(key="import.zip").set_value(("junk.zip", b"not a zip", "application/zip")).run()
    button(at, "Import").click().run()
    assert any("Not imported: junk.zip is not a readable zip file" in e.value for e in at.error)
    at.file_uploader(key="import.zip").set_value(None).run()
    assert not [t for t in at.text_input if t.key == "import.folder"]  # folder import is off by default
    monkeypatch.setenv("DECONV_ALLOW_FOLDER_IMPORT", str(app_env))
    at.run()
    at.text_input(key="import.folder").set_value(str(saved[0].path)).run()
    button(at, "Import").click().run()
    assert f"Imported as **{text.plain(saved[0].name + '_2')}**" in at.success[0].value  # escaped as markdown


def test_train_again_starts_a_saved_runs_settings_on_the_train_page(app_env: Path, a_run: Path, page) -> None:
    saved = runs.list_runs(app_env)[0]
    at = page("pages/runs.py")
    assert at.get("download_button")  # the runs table as CSV, among others
    at.selectbox[0].set_value(saved[-1].name).run()
    button(at, "Train again with these settings").click().run()
    assert not at.exception and at.title[0].value == "Train"
    assert at.session_state["model_config"] == saved[-1].model_config
    assert at.session_state["train_config"] == saved[-1].train_config
    from pages.parts import server

    job = server.job_manager().latest_job(at.session_state["owner"])
    assert job.model_config == saved[-1].model_config and job.train_config == saved[-1].train_config
    server.job_manager().stop(job)
    wait_job(lambda j: not job.active, timeout=60)


@contextlib.contextmanager
def altered_copy(run: Path, name: str, file: str, change) -> Iterator[Path]:
    """A copy of a saved run in the runs folder with one JSON file changed by `change(data)`; removed afterwards."""
    copy = run.parent / name
    shutil.copytree(run, copy)
    data = json.loads((copy / file).read_text())
    change(data)
    (copy / file).write_text(json.dumps(data))
    try:
        yield copy
    finally:
        shutil.rmtree(copy)


def test_a_hostile_run_is_listed_as_broken_and_breaks_no_page(app_env: Path, a_run: Path, page) -> None:
    with altered_copy(a_run, "hostile", "meta.json", lambda meta: meta.update(val_accuracy="high")):
        for name in PAGES:
            at = page(name)
            assert not at.exception, name
        at = page("pages/runs.py")
        assert any("hostile cannot be read" in e.value and "val\\_accuracy" in e.value for e in at.error)
        assert "hostile" not in list(at.dataframe[0].value["run"])


def test_a_broken_runs_reason_quoting_its_file_is_escaped_not_rendered(app_env: Path, a_run: Path, page) -> None:
    with altered_copy(a_run, "hostile-config", "config.json",
                      lambda config: config["model"].update(head="![x](http://example.invalid/x.png)")):
        at = page("pages/runs.py")
        shown = next(e.value for e in at.error if "hostile-config" in e.value)
        assert "\\!\\[x\\]\\(http" in shown and "![x](http" not in shown  # escaped: no remote image for anyone


def test_run_supplied_text_is_shown_as_plain_text_and_only_the_owner_may_delete(app_env: Path, a_run: Path,
                                                                                  page) -> None:
    hostile = {"owner": "f" * 16, "saved_at": "9999-12-31T00:00:00+0000", "message": "![x](http://example.invalid/x.png)"}
    with altered_copy(a_run, "someone-elses", "meta.json", lambda meta: meta.update(hostile)) as other:
        os.utime(other / "model.keras", (1_000_000_000, 1_000_000_000))  # its files say 2001, its meta.json 9999
        at = page("pages/runs.py")
        at.selectbox[0].set_value("someone-elses").run()
        assert any("![x](http://example.invalid/x.png)" in t.value for t in at.text)  # as text, not an image
        assert not [b for b in at.button if b.label == "Delete this run"]
        assert any("Only whoever trained or imported this run can delete it" in c.value for c in at.caption)
        assert at.selectbox[0].options[0] != "someone-elses"  # a date in the future does not make it the newest


def test_a_full_runs_folder_refuses_a_training_with_the_reason(app_env: Path, monkeypatch, page) -> None:
    monkeypatch.setenv("DECONV_RUNS_QUOTA", "1K")
    at = small_training(page("pages/train.py"), epochs=1)
    button(at, "Train").click().run()
    assert not at.exception and "Not started: the runs folder is full" in at.warning[0].value
    from pages.parts import server

    assert server.job_manager().active_job(at.session_state["owner"]) is None


def test_a_model_name_of_300_characters_in_a_link_is_ignored(app_env: Path) -> None:
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["model"] = "x" * 300
    at.run()
    assert not at.exception and at.session_state["active_run"] == str(runs.REFERENCE_DIR)  # the default model


def test_a_training_longer_than_the_server_allows_is_refused_with_the_reason(app_env: Path, monkeypatch, page) -> None:
    from pages.parts import server

    monkeypatch.setattr(server.job_manager(), "max_job_seconds", 1.0)
    at = small_training(page("pages/train.py"), epochs=200)
    button(at, "Train").click().run()
    assert not at.exception and "Not started: This training would take about" in at.warning[0].value
    assert not at.warning[0].value.endswith("..")
    assert server.job_manager().active_job(at.session_state["owner"]) is None


def test_resize_upsampling_clears_the_checkerboard_warning_and_scores_lower(app_env: Path, page) -> None:
    at = page("pages/architecture.py")
    at.slider(key="w.model_config.deconv_kernel").set_value(3).run()
    assert "Checkerboard risk" in at.warning[0].value and "resize upsampling" in at.warning[0].value
    at.toggle(key="architecture.checkerboard").set_value(True).run()
    assert not at.exception
    scores = at.dataframe[-1].value
    assert list(scores["layer"]) == ["up1_deconv"]
    transpose, resize = float(scores["transpose (score)"][0]), float(scores["resize (score)"][0])
    assert transpose > 2 * resize  # a 3x3 kernel at stride 2 paints a grid; repeat-then-convolve does not
    next(r for r in at.radio if "upsample" in (r.key or "")).set_value("resize").run()
    assert not at.warning and list(at.dataframe[1].value["overlap"]) == ["even (resize)"]
    assert describe(ModelConfig(deconv_kernel=3, upsample="resize")).params == int(
        metric(at, "Parameters").replace(",", ""))


def test_mirror_prediction_is_a_switch_of_the_network_and_the_train_page_says_what_it_is(app_env: Path, page) -> None:
    at = page("pages/architecture.py")
    switch = at.toggle(key="w.model_config.mirror_predict")
    assert switch.value is True and "mirror image" in switch.label
    switch.set_value(False).run()
    assert at.session_state["model_config"] == ModelConfig(mirror_predict=False) and not at.exception
    assert metric(at, "Parameters") == f"{DEFAULT_PARAMS:,}"  # how it answers, not what it is made of
    button(at, "The article's network").click().run()
    assert at.toggle(key="w.model_config.mirror_predict").value is False  # the article's network as it was
    at.switch_page("pages/train.py").run()
    words = next(e for e in at.expander if e.label == "What do these words mean?")
    assert "Mirror prediction (test-time augmentation)." in words.markdown[0].value
    assert "Label smoothing." in words.markdown[0].value


def test_visitor_text_is_escaped_so_markdown_shows_no_link_image_or_emphasis() -> None:
    from pages.parts import text

    for raw in ("[click](http://evil.invalid)", "![x](http://evil.invalid/p.png)", "<img src=x>", "www.evil.invalid",
                "me@evil.invalid", "*bold* _it_ `code`"):
        shown = text.plain(raw)
        assert not re.search(r"(?<!\\)[\[\]<>@*_`]|www\.", shown), shown  # each such character escaped
        assert shown.replace("\\", "") == raw  # nothing lost: every character is still there, escaped
