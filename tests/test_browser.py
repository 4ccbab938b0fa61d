"""End to end in a real browser: the app served by `streamlit run`, driven by Playwright in Debian's Chromium."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from deconv import samples
from deconv.config import ModelConfig
from deconv.cost import describe
from tests.conftest import free_port, start_server, stop_server

CHROMIUM = shutil.which("chromium")
MISSING = "needs Debian's Chromium and Playwright: apt-get install chromium && pip install -r requirements-dev.txt"
HAVE_BROWSER = bool(CHROMIUM) and importlib.util.find_spec("playwright") is not None
if not HAVE_BROWSER and os.environ.get("DECONV_REQUIRE_BROWSER"):  # CI installs them: never skip there
    raise RuntimeError(MISSING)
pytestmark = pytest.mark.skipif(not HAVE_BROWSER, reason=MISSING)
ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run",
         "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]  # a test pattern as the camera


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """One app server for the module's tests."""
    tmp = tmp_path_factory.mktemp("browser")
    proc, url = start_server(tmp)
    yield {"url": url, "runs": tmp / "runs", "tmp": tmp}
    stop_server(proc)


@pytest.fixture(scope="module")
def page(server, tmp_path_factory: pytest.TempPathFactory):
    """One Chromium tab; screenshots go to a folder this prints."""
    from playwright.sync_api import sync_playwright

    shots = tmp_path_factory.mktemp("screenshots")
    print(f"\nbrowser screenshots: {shots}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 1000}, permissions=["camera"])
        tab.shots = shots
        tab.set_default_timeout(90_000)
        yield tab
        browser.close()


def saved_runs(server) -> list[str]:
    return sorted(p.name for p in server["runs"].iterdir() if (p / "model.keras").exists())


def go(page, server, path: str, ready: str) -> None:
    page.goto(f"{server['url']}/{path}")
    page.get_by_text(ready, exact=True).first.wait_for()


def shot(page, name: str) -> None:
    page.screenshot(path=str(page.shots / f"{name}.png"), full_page=True)
    assert page.locator('[data-testid="stException"]').count() == 0, f"exception box on {name}"


@pytest.mark.parametrize("path, ready", [("", "The idea"), ("architecture", "Parameters"), ("train", "Batch size"),
                                         ("classify", "Classify"), ("runs", "Runs")])
def test_every_page_loads_without_an_exception(page, server, path: str, ready: str) -> None:
    go(page, server, path, ready)
    time.sleep(1)
    shot(page, f"page-{path or 'home'}")


def test_a_link_to_a_page_works_as_the_first_visit_to_a_fresh_server(page, tmp_path: Path) -> None:
    proc, url = start_server(tmp_path)  # nobody has opened app.py on this server yet
    try:
        page.goto(f"{url}/train?epochs=3")
        page.get_by_text("Batch size", exact=True).first.wait_for()
        page.get_by_text("Active model").first.wait_for()  # the sidebar: the page ran through app.py
        time.sleep(1)
        shot(page, "first-visit-deep-link")
        assert "for 3 epochs" in page.inner_text("body")
    finally:
        stop_server(proc)


def parameters(page) -> str:
    return page.get_by_test_id("stMetric").filter(has_text="Parameters").get_by_test_id("stMetricValue").inner_text()


def test_moving_a_width_slider_changes_the_parameter_count(page, server) -> None:
    go(page, server, "architecture", "Parameters")
    before = parameters(page)
    page.get_by_role("slider").nth(1).focus()  # block 1 width
    page.keyboard.press("End")
    page.wait_for_function("b => !document.body.innerText.includes(b)", arg=before)
    assert parameters(page) != before
    shot(page, "architecture-wider")
    page.get_by_role("button", name="Fast default").click()


def start_training(page, server, *epochs_keys: str) -> None:
    go(page, server, "train", "Batch size")
    page.get_by_role("slider").nth(2).focus()  # epochs
    for key in epochs_keys:
        page.keyboard.press(key)
    time.sleep(1.5)
    page.get_by_role("button", name="Train", exact=True).click()


def test_training_shows_progress_and_curves_then_a_confusion_matrix_and_a_saved_run(page, server) -> None:
    start_training(page, server, "Home", "ArrowRight")  # 2 epochs
    page.get_by_text(re.compile("Epoch 1/2|Epoch 2/2|Trained 2 epochs")).first.wait_for()  # a short run may end at once
    page.locator(".js-plotly-plot").first.wait_for()  # the curves, growing while it trains
    shot(page, "train-during")
    page.get_by_text("Runs", exact=True).first.click()  # leave while it trains
    time.sleep(2)
    page.get_by_text("Train", exact=True).first.click()
    page.get_by_text("Confusion matrix", exact=True).first.wait_for()
    shot(page, "train-done")
    saved = saved_runs(server)
    assert len(saved) == 1
    go(page, server, "runs", "Compare")
    page.get_by_text(saved[0]).first.wait_for(state="attached")  # listed (the table is a canvas: its cells are hidden)
    shot(page, "runs")


MARKERS = "[...document.querySelectorAll('.js-plotly-plot')].find(g => g.data?.[1]?.mode === 'markers')"
CELL_CENTRE = """([row, col]) => {
  const gd = """ + MARKERS + """;
  if (!gd || !gd._fullLayout?.xaxis?.l2p) return null;  // not drawn (again) yet: the caller waits
  gd.scrollIntoView({block: "center"});
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  return [box.left + xa._offset + xa.l2p(col), box.top + ya._offset + ya.l2p(row), gd.data[1].customdata[row * 10 + col][0]];
}"""


def test_a_click_on_a_confusion_matrix_cell_shows_that_cells_validation_images(page, server) -> None:
    start_training(page, server, "Home", "ArrowRight")  # 2 epochs, shown to this session when done
    page.get_by_text("Click a cell to see its images.").wait_for(timeout=300_000)
    cells = page.wait_for_function(f"() => {MARKERS}?.data[1].customdata").json_value()  # [count, share] per cell
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    row, col = divmod(max(range(100), key=lambda i: cells[i][0]), 10)
    true, predicted = samples.LABELS[row], samples.LABELS[col]
    said = page.get_by_text(re.compile(rf"^true {true}, predicted {predicted}.*validation image"))  # not the hover box
    for attempt in range(3):  # a click that lands while the finished page is still being redrawn is lost: again
        page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')")  # page idle
        x, y, count = page.wait_for_function(CELL_CENTRE, arg=[row, col]).json_value()  # drawn after the last rerun
        page.mouse.click(x, y)
        try:
            said.wait_for(timeout=10_000)
            break
        except PlaywrightTimeout:
            assert attempt < 2, "three clicks on a confusion-matrix cell showed none of its images"
    shot(page, "train-confusion-clicked")
    assert f"{count} validation image" in said.inner_text()
    assert page.get_by_text(re.compile(r"^#\d+$")).count() == min(count, 24)  # each image, captioned by its index
    shot(page, "train-confusion-cell")


def test_look_inside_shows_the_deconvnet_projection_of_an_activation(page, server) -> None:
    go(page, server, "classify", "Your pictures")
    page.get_by_role("tab", name="CIFAR-10 test images").click()
    page.get_by_text("Look inside", exact=True).nth(1).click()  # the first image's toggle (0 is the page's text)
    page.get_by_role("tab", name="Deconvnet projection").first.click()
    page.get_by_text("deconvnet projection (grey: nothing came back)").wait_for()
    page.get_by_text("guided backpropagation", exact=True).wait_for()
    caption = page.get_by_text(re.compile(r"(block|up)\d_(de)?conv channel \d+ at \(\d+, \d+\)")).first.inner_text()
    assert "the projected activation" in caption and "in orange" in caption
    shot(page, "classify-deconvnet")


def test_a_camera_picture_is_classified(page, server) -> None:
    go(page, server, "classify", "Your pictures")
    page.get_by_text("Take a picture with the camera").click()
    page.locator("video").wait_for()  # Chromium's fake camera: a moving test pattern
    page.wait_for_function("() => document.querySelector('video')?.readyState >= 2")  # frames are arriving
    page.get_by_role("button", name="Take Photo").click()
    uploads = page.get_by_role("tabpanel", name="Your pictures")
    uploads.get_by_text("camera photo", exact=True).wait_for()
    uploads.get_by_text("what the model sees (32x32)").first.wait_for()
    assert uploads.get_by_text("All ten classes").count() >= 1
    shot(page, "classify-camera")


def test_stop_ends_training_within_seconds_and_keeps_the_model(page, server) -> None:
    before = len(saved_runs(server))
    start_training(page, server, "End")
    page.get_by_text("images/s").first.wait_for()
    live = page.get_by_text(re.compile(r"Confusion matrix after epoch \d+ of 200"))
    live.wait_for()  # while it trains: the matrix of the latest epoch, refreshed every epoch
    first = int(re.search(r"epoch (\d+)", live.inner_text()).group(1))
    page.wait_for_function(f"() => /Confusion matrix after epoch (\\d+) of 200/.exec(document.body.innerText)?.[1] > {first}")
    shot(page, "train-live-confusion")
    page.get_by_role("button", name="Stop").click()
    asked = time.time()
    page.get_by_text("Stopped by request").wait_for(timeout=60_000)
    assert time.time() - asked < 30
    shot(page, "train-stopped")
    assert len(saved_runs(server)) == before + 1


def test_upload_a_photo_and_a_text_file_named_png(page, server) -> None:
    tmp = server["tmp"]
    (tmp / "photo.jpg").write_bytes(samples.good()["photo.jpg"])
    (tmp / "notes.png").write_bytes(b"this is not a picture")
    go(page, server, "classify", "Your pictures")
    page.locator('input[type="file"]').set_input_files([str(tmp / "photo.jpg"), str(tmp / "notes.png")])
    page.get_by_text("notes.png cannot be classified").wait_for()
    uploads = page.get_by_role("tabpanel", name="Your pictures")  # the CIFAR-10 tab has results of its own
    uploads.get_by_text("All ten classes").wait_for()  # the photo's
    uploads.get_by_text("what the model sees (32x32)").wait_for()
    shot(page, "classify-upload")


def test_a_refresh_keeps_the_saved_runs_and_who_owns_them_out_of_the_url(page, server) -> None:
    go(page, server, "runs", "Compare")
    page.reload()
    page.get_by_text("Compare", exact=True).wait_for()
    for name in saved_runs(server):
        page.get_by_text(name).first.wait_for(state="attached")  # the table is a canvas: its cells are hidden
    page.get_by_text(re.compile(r"; by you$")).first.wait_for()  # the cookie still names this browser the owner
    assert "client=" not in page.url and "deconv_owner" not in page.url
    shot(page, "runs-after-refresh")


def job_dirs(server) -> list[Path]:
    jobs = server["runs"] / ".jobs"
    return sorted(jobs.iterdir(), key=lambda p: p.stat().st_mtime) if jobs.is_dir() else []


def ended(job_dir: Path) -> dict | None:
    import json

    events = [json.loads(line) for line in (job_dir / "progress.jsonl").read_text().splitlines() if line.strip()]
    return next((e for e in events if e["event"] == "end"), None)


def test_two_quick_train_clicks_start_one_job(page, server) -> None:
    before = len(job_dirs(server))
    start_training(page, server, "End")  # 200 epochs: it cannot end before the Stop below, however fast the machine
    page.get_by_role("button", name="Train", exact=True).click(force=True, no_wait_after=True)  # a second click at once
    page.get_by_text("images/s").first.wait_for()
    time.sleep(2)  # time for a second job to appear, if the second click made one
    assert len(job_dirs(server)) == before + 1
    shot(page, "train-double-click")
    page.get_by_role("button", name="Stop").click()
    page.get_by_text("Stopped by request").wait_for(timeout=60_000)


def test_closing_the_tab_mid_training_stops_the_job_and_frees_the_slot(page, server) -> None:
    tab = page.context.browser.new_page(viewport={"width": 1400, "height": 1000})
    tab.shots = page.shots
    tab.set_default_timeout(90_000)
    start_training(tab, server, "End")  # 200 epochs
    tab.get_by_text("images/s").first.wait_for()
    job = job_dirs(server)[-1]
    tab.close()
    closed = time.time()
    while (end := ended(job)) is None:
        assert time.time() - closed < 90, "the job of a closed tab was not stopped"
        time.sleep(0.5)
    assert end["status"] == "stopped" and (Path(end["run_dir"]) / "model.keras").exists()
    start_training(page, server, "Home")  # the slot is free again: a 1-epoch training runs to its end
    page.get_by_text("Trained 1 epoch").wait_for(timeout=120_000)


def test_settings_in_a_link_are_clamped_with_a_note_and_follow_the_sliders(page, server) -> None:
    go(page, server, "architecture?widths=16,32&epochs=1000", "Parameters")
    page.get_by_text("epochs=1000 is not allowed").wait_for()
    assert parameters(page) == f"{describe(ModelConfig(widths=(16, 32))).params:,}"
    shot(page, "link-with-bad-settings")
    page.get_by_role("slider").nth(1).focus()  # block 1 width
    page.keyboard.press("End")
    page.wait_for_function("() => location.search.includes('widths=256%2C32') || location.search.includes('widths=256,32')")
    assert "epochs=200" in page.url
    shared = page.url.split("?")[0] + "?widths=256,32&epochs=200"
    go(page, server, shared.removeprefix(server["url"] + "/"), "Parameters")
    assert parameters(page) == f"{describe(ModelConfig(widths=(256, 32))).params:,}"
    assert page.get_by_text("not allowed").count() == 0


def width_slider_value(page) -> int:
    return int(page.get_by_test_id("stSliderThumbValue").nth(1).inner_text())


def test_quick_key_presses_on_a_slider_all_count(page, server) -> None:
    go(page, server, "architecture", "Parameters")
    page.get_by_role("button", name="Fast default").click()
    page.wait_for_function("() => !location.search.includes('widths')")
    page.get_by_role("slider").nth(1).focus()  # block 1 width: 32, in steps of 8
    for i in range(8):
        page.keyboard.press("ArrowRight")
        time.sleep(0.1 * (i % 3))  # some presses together, some while the last one's rerun is under way
    page.wait_for_function("() => location.search.includes('widths=96')", timeout=30_000)
    time.sleep(2)  # any late rerun would have moved it back by now
    assert width_slider_value(page) == 96 and "widths=96" in page.evaluate("location.search")
    page.get_by_role("button", name="Fast default").click()


def test_a_tab_left_open_across_a_server_restart_keeps_its_settings_model_and_next_change(page, tmp_path: Path) -> None:
    port = free_port()
    proc, url = start_server(tmp_path, port)
    try:
        page.goto(f"{url}/architecture?widths=16,32&epochs=3")
        page.get_by_text("Parameters").first.wait_for()
        time.sleep(1)
        stop_server(proc)
        proc, url = start_server(tmp_path, port)
        time.sleep(3)  # the page reconnects to a server that has never seen its session
        page.get_by_role("slider").nth(1).focus()  # block 1 width: 16
        page.keyboard.press("ArrowRight")
        page.wait_for_function("() => location.search.includes('widths=24%2C32') || location.search.includes('widths=24,32')")
        assert "epochs=3" in page.evaluate("location.search")
        page.wait_for_function(f"() => document.body.innerText.includes('{describe(ModelConfig(widths=(24, 32))).params:,}')")
        shot(page, "after-server-restart")
    finally:
        stop_server(proc)


def test_no_page_asks_for_anything_outside_the_server(page, server) -> None:
    from urllib.parse import urlsplit

    here = urlsplit(server["url"]).netloc
    outside: list[str] = []

    def record(request) -> None:  # a fetch over the network to any other host (data:, blob:, about: stay local)
        url = urlsplit(request.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.netloc != here:
            outside.append(request.url)

    tab = page.context.browser.new_page(viewport={"width": 1400, "height": 1000})  # no earlier server's page in it
    tab.set_default_timeout(90_000)
    tab.on("request", record)
    try:
        for path, ready in [("", "The idea"), ("architecture", "Parameters"), ("train", "Batch size"),
                            ("classify", "Classify"), ("runs", "Runs")]:
            go(tab, server, path, ready)
            time.sleep(1)
    finally:
        tab.close()
    assert outside == []  # offline, each of these would be a failed fetch in the console
