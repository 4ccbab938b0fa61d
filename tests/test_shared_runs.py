"""Two `streamlit run app.py` servers sharing one runs folder, as behind a load balancer with sticky sessions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deconv import runs
from tests.conftest import start_server, stop_server
from tests.test_browser import CHROMIUM, FLAGS, HAVE_BROWSER, MISSING

pytestmark = pytest.mark.skipif(not HAVE_BROWSER, reason=MISSING)
LINK = "train?widths=8&train_size=300&val_size=100&epochs=1"  # the same small network on both servers


def test_two_servers_training_the_same_network_at_once_save_two_runs_both_list(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    (first, first_url), (second, second_url) = start_server(tmp_path), start_server(tmp_path)  # one runs folder
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            tabs = []
            for url in (first_url, second_url):  # one visitor on each server, as sticky sessions send them
                tab = browser.new_page(viewport={"width": 1400, "height": 1000})
                tab.set_default_timeout(180_000)
                tab.goto(f"{url}/{LINK}")
                tab.get_by_text("Batch size", exact=True).first.wait_for()
                tabs.append(tab)
            for tab in tabs:  # within a second or two: the same run name, by date, time and widths
                tab.get_by_role("button", name="Train", exact=True).click()
            for tab in tabs:
                tab.get_by_text(re.compile("Trained 1 epoch")).first.wait_for()
            saved, broken = runs.list_runs(tmp_path / "runs")
            assert len(saved) == 2 and broken == [] and len({r.meta.owner for r in saved}) == 2
            for tab in tabs:  # each server lists both runs, its own and the other's
                tab.goto(tab.url.split("/train")[0] + "/runs")
                for run in saved:
                    tab.get_by_text(run.name).first.wait_for(state="attached")  # the table is a canvas: its cells are hidden
            browser.close()
    finally:
        stop_server(first)
        stop_server(second)
