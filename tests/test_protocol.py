"""A shared server at the protocol level: visitors as websocket clients speaking Streamlit's BackMsg/ForwardMsg.

Two (or more) sessions on one `streamlit run app.py`: one holds everything the other is shown and exports, or
sends what a browser never would (a cache clear, many sessions from one address), and none of it lets it act as
another visitor, reset what the server shares, or take the training queue from the others.
"""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

from bench.protocol import Visitor
from deconv import owners, runs
from pages.parts.state import COOKIE
from tests.conftest import start_server, stop_server

SMALL = {"widths": "8", "train_size": "300", "val_size": "100", "epochs": "1"}  # trains in seconds
LONG = {**SMALL, "epochs": "200"}  # runs until stopped
HEX = re.compile(r"[0-9a-f]{16,64}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One app server: one training slot, addresses from a proxy header, two trainings per address."""
    tmp = tmp_path_factory.mktemp("protocol")
    proc, url = start_server(tmp, DECONV_MAX_JOBS="1", DECONV_MAX_QUEUE="20", DECONV_PROXY_HEADER="X-Forwarded-For",
                             DECONV_MAX_JOBS_PER_ADDRESS="2")
    yield {"url": url, "runs": tmp / "runs", "proc": proc}
    stop_server(proc)


def visitor(server: dict, token: str | None = None, address: str = "192.0.2.10") -> Visitor:
    """A connected visitor: a browser holding `token` in its cookie (none: a first visit), from `address`."""
    return Visitor(server["url"], cookies={COOKIE: token} if token else {},
                   headers={"X-Forwarded-For": address}).connect()


def wait_for(check: Callable[[], object], timeout: float = 120, what: str = "") -> object:
    """Poll `check` until it returns something true."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if result := check():
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what or check}")


def saved_runs(server: dict) -> list[runs.RunInfo]:
    """The runs saved in the server's folder."""
    return runs.list_runs(server["runs"])[0]


def worker_processes(server: dict) -> int:
    """How many `deconv worker` processes the server has started (warm or training)."""
    count = 0
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == server["proc"].pid and b"worker" in cmd:
            count += 1
    return count


def stop_all(server: dict, *people: Visitor) -> None:
    """Each visitor presses Stop or Cancel if it has a job; returns when every started training has ended."""
    for v in people:
        v.open("train")
        for label in ("Stop", "Cancel"):
            if v.has_widget(label):
                v.click(label)
    wait_for(lambda: _no_active(server), 90, "the trainings to end")


def _no_active(server: dict) -> bool:
    """Whether every training that started has ended (by the jobs' progress files)."""
    events = [f.read_text() for f in (server["runs"] / ".jobs").glob("*/progress.jsonl")]
    return sum('"event": "start"' in e for e in events) == sum('"event": "end"' in e for e in events)


def job_count(server: dict) -> int:
    """How many trainings the server has accepted so far (one folder each)."""
    return sum(bool(re.fullmatch(r"[0-9a-f]{12}", p.name)) for p in (server["runs"] / ".jobs").iterdir())


def test_nothing_a_visitor_is_shown_or_downloads_lets_another_act_as_them(server: dict) -> None:
    secret = (server["runs"] / owners.SECRET_FILE)
    token = owners.new_token()
    with visitor(server, token) as a:
        a.open("train", SMALL)
        seen = [a.query, a.text()]
        a.click("Train")
        wait_for(lambda: saved_runs(server), 180, "the first visitor's run to be saved")
        wait_for(lambda: _no_active(server), 60, "the job to end")
        (run,) = saved_runs(server)
        assert run.meta.owner == owners.owner_key(token, secret.read_bytes()) != token
        for page in ("", "train", "classify", "runs"):
            a.open(page)
            assert not a.exceptions()
            seen += [a.query, a.text()]
        assert "by you" in a.text() and a.has_widget("Yes, delete")  # the owner may delete it
        exported = runs.export_zip(run.path)  # what the Run folder (zip) button serves
        with zipfile.ZipFile(io.BytesIO(exported)) as z:
            meta = json.loads(z.read(f"{run.name}/meta.json"))
            exported_text = b"".join(z.read(n) for n in z.namelist() if not n.endswith(".keras"))
        seen += [exported_text.decode("latin-1"), runs.runs_csv([run])]
    assert "owner" not in meta
    assert not any(token in text for text in seen), "the browser's token reached a page, a link or a download"

    # A second browser tries every value the first was shown or could download, as its cookie and in links.
    candidates = {m for text in seen for m in HEX.findall(text)} | {run.meta.owner, owners.new_token()}
    for candidate in sorted(candidates)[:12]:
        with visitor(server, candidate[:32], "192.0.2.20") as b:
            b.open("runs", {"client": candidate[:16]})
            assert "by another visitor" in b.text() and not b.has_widget("Yes, delete")
            assert "Only whoever trained or imported this run can delete it." in b.text()
    # The first browser, back with its cookie (a refresh, another tab), still owns the run.
    with visitor(server, token) as again:
        again.open("runs")
        assert "by you" in again.text() and again.has_widget("Yes, delete")


def test_a_visitors_cache_clear_leaves_the_job_manager_its_jobs_and_the_slot_cap(server: dict) -> None:
    owner, other, hostile = owners.new_token(), owners.new_token(), owners.new_token()
    with visitor(server, owner) as a, visitor(server, hostile, "192.0.2.30") as h, \
            visitor(server, other, "192.0.2.40") as b:
        a.open("train", LONG)
        a.click("Train")
        wait_for(lambda: a.open("train").has_widget("Stop"), 60, "the owner's job to run")
        workers = worker_processes(server)
        for _ in range(3):
            h.clear_cache()
            h.open("train")  # the next page run would build a second manager if the first had been cleared away
        assert worker_processes(server) == workers
        b.open("train", LONG)
        b.click("Train")  # with one slot, it must wait for the owner's training
        assert "Waiting for a training slot: number 1 in the queue" in b.text()
        assert a.open("train").has_widget("Stop"), "the owner's Train page lost its running job"
        stop_all(server, a, b)


def test_one_address_cannot_fill_the_training_queue_and_a_visitor_elsewhere_still_gets_in(server: dict) -> None:
    tokens = [owners.new_token() for _ in range(4)]
    script = [visitor(server, t, "192.0.2.66") for t in tokens]  # one machine, four sessions with fresh cookies
    honest = visitor(server, owners.new_token(), "192.0.2.77")
    try:
        answers, before = [], job_count(server)
        for v in script:
            v.open("train", LONG)
            v.click("Train")
            answers.append(v.text())
        refused = [t for t in answers if "Not started: Your network address already has 2 trainings" in t]
        assert len(refused) == 2, answers
        with visitor(server, tokens[0], "192.0.2.66") as tab:  # the same browser in another tab: still one job
            tab.open("train", LONG)
            assert tab.has_widget("Stop") or tab.has_widget("Cancel")
        assert job_count(server) == before + 2
        honest.open("train", LONG)
        honest.click("Train")
        assert "Waiting for a training slot" in honest.text() and "Not started" not in honest.text()
        assert job_count(server) == before + 3
    finally:
        stop_all(server, *script, honest)
        for v in [*script, honest]:
            v.close()
