"""What ``pbt run`` prints when nobody watches a terminal: plain progress lines, unwrapped tables."""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys

from helpers import toy_spec

from pbt.cli.progress import LineView, progress_view
from pbt.controller.ledger import Snapshot


def snap(steps: int, completed: int, running: int = 4) -> Snapshot:
    return Snapshot(trials=completed + running, by_status={"completed": completed, "running": running},
                    steps_done=steps, budget_steps=2000, budget_trials=None, best=None, in_flight=running,
                    finished=False, elapsed=0.0)


def test_plain_progress_lines_come_every_ten_seconds_then_sparser():
    from rich.console import Console

    spec = toy_spec(budget={"total_steps": 2000})
    buf = io.StringIO()
    console = Console(file=buf, width=200)
    assert not console.is_terminal
    now = [0.0]
    view = progress_view(spec, console, quiet=False)
    assert isinstance(view, LineView)
    view.clock = lambda: now[0]
    view.started = view.last = 0.0
    printed_at = []
    for t in range(0, 3601):  # an hour, one tick per second
        now[0] = float(t)
        before = buf.getvalue().count("\n")
        view.update(snap(steps=min(2000, t), completed=t // 4))
        if buf.getvalue().count("\n") > before:
            printed_at.append(t)
    assert printed_at[:6] == [10, 20, 30, 40, 50, 60]  # a 3-minute run prints about 18 lines
    gaps = [b - a for a, b in itertools.pairwise(printed_at)]
    assert gaps == sorted(gaps) and max(gaps) <= 300 and len(printed_at) < 60
    first = buf.getvalue().splitlines()[0]
    assert first == "[10s] 10/2,000 steps (0%) | trials 2 done, 4 running | best q —"
    assert progress_view(spec, console, quiet=True) is None


def test_tables_are_not_wrapped_at_80_columns_when_piped():
    code = ("from rich.table import Table; from pbt.cli.common import out; t = Table(); "
            "[t.add_column(f'column number {i}') for i in range(8)]; t.add_row(*['x'] * 8); out.print(t)")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    lines = proc.stdout.splitlines()
    assert len(lines) == 5 and "column number 7" in lines[1]  # one row, one header line: no wrapping
    assert 80 < max(len(line) for line in lines) <= 200


def test_json_commands_print_one_object_even_when_they_cannot_start(tmp_path):
    import json
    from pathlib import Path

    from pbt.testing import free_port, pbt

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nobjective: {metric: q, mode: up}\n")
    usage = pbt("run", str(bad), "--storage", str(tmp_path / "runs"), "--json")
    assert usage.returncode == 2
    doc = json.loads(usage.stdout)
    assert doc["outcome"] == "error" and doc["reason"] == "usage" and doc["exit_code"] == 2 and "mode" in doc["message"]
    missing = pbt("status", "nope", "--storage", str(tmp_path / "runs"), "--json")
    assert missing.returncode == 1 and json.loads(missing.stdout)["message"].startswith("no study 'nope'")
    toy = tmp_path / "toy.yaml"
    toy.write_text((Path(__file__).parents[1] / "examples" / "toy.yaml").read_text())
    down = pbt("run", str(toy), "--storage", str(tmp_path / "runs"), "--json",
               "--broker", f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    doc = json.loads(down.stdout)
    assert down.returncode == 5 and doc["reason"] == "environment" and "hunter2" not in down.stdout + down.stderr


def test_a_study_another_controller_drives_is_refused_with_exit_3_and_not_announced(tmp_path):
    import json
    import signal

    from helpers import toy_data

    from pbt.testing import pbt, pbt_background, wait_for, write_study

    study = write_study(tmp_path / "s.yaml", toy_data(trainer={"config": {"lr": 0.01, "sleep_per_step": 0.05}},
                                                      budget={"total_steps": 2000}))
    storage = str(tmp_path / "runs")
    first = pbt_background("run", str(study), "--storage", storage, "-q", log=tmp_path / "first.log")
    try:
        wait_for(lambda: "study toy:" in (tmp_path / "first.log").read_text(), 60, what="the first controller")
        second = pbt("run", str(study), "--storage", storage, "--json")
        assert second.returncode == 3, second.stderr
        assert "already driven by another controller" in second.stderr and "records in" not in second.stderr
        assert json.loads(second.stdout)["reason"] == "locked"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
