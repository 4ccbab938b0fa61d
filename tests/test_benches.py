"""Every bench script runs: a few seconds of each, one client, checked for what it reports (never for a time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from deconv.samples import write_cifar
from tests.conftest import ROOT


def test_the_hostile_visitors_bench_runs_an_attack_and_reports_what_the_server_spent(tmp_path: Path) -> None:
    env = {**os.environ, "DECONV_DATA_DIR": str(write_cifar(tmp_path / "data", test_per_class=30))}
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "bench/hostile_visitors.py", "--only", "markup labels", "--no-honest",
                           "--results", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| markup labels | Imported as" in done.stdout and "texts that render a link or an image: 0" in done.stdout
    (attack,) = json.loads(out.read_text())["attacks"]
    assert set(attack) == {"attack", "what", "answer", "cpu_seconds", "children_cpu_seconds", "peak_tree_mib", "disk_mib",
                           "seconds", "honest"}
    assert attack["cpu_seconds"] > 0 and attack["peak_tree_mib"] > 0
