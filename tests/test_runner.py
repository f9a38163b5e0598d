"""``make run``'s runner: estimates from declared work, reuse of finished notebooks, and a clear stop on failure."""

from __future__ import annotations

import json

import nbformat
import pytest
import torch

from helpers.workbook import runner


def _notebook(path, *sources, work=None):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if work is not None:
        nb.metadata["workbook"] = {"work_gflop": work}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    path.write_text(nbformat.writes(nb))
    return path


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBOOK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(runner, "calibrate", lambda seconds=2.0, size=1024, dtype=None: 100.0)
    return tmp_path


def test_plan_estimates_from_declared_work_and_refuses_bad_input(runs):
    nb = _notebook(runs / "00_a.ipynb", "x = 1", work={"smoke": 500.0})
    (p,) = runner.plan("smoke", [nb])
    assert p.work_gflop == 500.0 and p.estimate_s(100.0) == 5.0 and not p.reuse
    assert runner.plan("laptop", [nb])[0].estimate_s(100.0) is None  # nothing declared for that scale
    with pytest.raises(ValueError, match="Unknown scale 'huge'"):
        runner.plan("huge", [nb])
    with pytest.raises(FileNotFoundError, match="No such notebook"):
        runner.plan("smoke", [runs / "missing.ipynb"])


def test_finished_notebooks_are_reused_and_measured_work_replaces_the_declaration(runs, capsys):
    nb = _notebook(runs / "00_a.ipynb", "x = 1", work={"smoke": 500.0})
    assert runner.run_notebooks("smoke", [nb]) == 0
    timings = json.loads((runs / "runs" / "notebooks" / "timings.json").read_text())
    assert timings["00_a.ipynb"]["gflops"] == 100.0 and timings["00_a.ipynb"]["seconds"] > 0
    assert timings["00_a.ipynb"]["dtype"] in ("float32", "bfloat16")  # the precision the notebooks computed in
    (p,) = runner.plan("smoke", [nb])
    assert p.reuse and p.work_gflop == timings["00_a.ipynb"]["work_gflop"]
    assert not runner.plan("smoke", [nb], clean=True)[0].reuse
    capsys.readouterr()
    assert runner.run_notebooks("smoke", [nb]) == 0
    out = capsys.readouterr().out
    assert "reused (finished earlier)" in out and "Actual times: nothing ran" in out
    runner.declare_work("smoke", "test box", [nb])  # metadata only: still finished
    assert runner.plan("smoke", [nb])[0].reuse
    _notebook(nb, "x = 2", work={"smoke": 500.0})  # an edited cell: runs again
    assert not runner.plan("smoke", [nb])[0].reuse


def test_a_failing_notebook_stops_the_run_naming_notebook_and_cell(runs, capsys):
    bad = _notebook(runs / "01_bad.ipynb", "x = 1", "raise RuntimeError('boom in cell two')")
    after = _notebook(runs / "02_after.ipynb", "y = 2")
    assert runner.run_notebooks("smoke", [bad, after]) == 1
    out = capsys.readouterr().out
    assert "01_bad.ipynb failed in cell 1" in out and "RuntimeError: boom in cell two" in out
    assert not (runs / "runs" / "notebooks" / "02_after.ipynb").exists(), "nothing runs after a failure"
    assert not runner.plan("smoke", [bad])[0].reuse, "a failed notebook is not reused"


def test_declare_work_writes_the_measured_work_into_the_notebook(runs):
    nb = _notebook(runs / "00_a.ipynb", "x = 1", work={"smoke": 500.0, "laptop": 7.0})
    other = _notebook(runs / "01_b.ipynb", "y = 1")
    assert runner.run_notebooks("smoke", [nb]) == 0
    measured = json.loads((runs / "runs" / "notebooks" / "timings.json").read_text())["00_a.ipynb"]["work_gflop"]
    assert runner.declare_work("smoke", "test box", [nb, other]) == ["00_a.ipynb"]  # 01_b never ran: left alone
    meta = json.loads(nb.read_text())["metadata"]["workbook"]
    assert meta["work_gflop"] == {"smoke": measured, "laptop": 7.0} and "test box" in meta["work_note"]
    assert "workbook" not in json.loads(other.read_text())["metadata"]
    with pytest.raises(ValueError, match="Unknown scale"):
        runner.declare_work("huge", "x")


def test_the_runner_says_which_precision_it_measured(monkeypatch, capsys):
    monkeypatch.delenv("WORKBOOK_BF16", raising=False)
    monkeypatch.setattr(runner.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runner, "cpu_precision", lambda: {"dtype": "float32", "float32": 250.0, "bfloat16": 150.0})
    runner._explain_precision()
    out = capsys.readouterr().out
    assert "float32" in out and "250" in out and "150" in out and "WORKBOOK_BF16" in out
    monkeypatch.setattr(runner, "cpu_precision", lambda: {"dtype": "float32", "float32": None, "bfloat16": None})
    runner._explain_precision()  # no native bf16: nothing was measured, nothing to say
    monkeypatch.setenv("WORKBOOK_BF16", "0")
    runner._explain_precision()  # the user chose
    assert capsys.readouterr().out == ""


def test_the_watchdog_kills_an_idle_child_and_spares_a_busy_one():
    import subprocess
    import sys

    from helpers.workbook.watchdog import KernelWatchdog

    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    with KernelWatchdog(stall_s=1.0, poll_s=0.1) as dog:
        busy.wait(timeout=10)
    assert not dog.stalled and busy.returncode == 0
    idle = subprocess.Popen(["sleep", "30"])
    with KernelWatchdog(stall_s=0.5, poll_s=0.1) as dog:
        idle.wait(timeout=10)
    assert dog.stalled and idle.returncode == -9


def test_a_hung_kernel_is_killed_retried_once_then_reported(runs, monkeypatch, capsys):
    monkeypatch.setenv("WORKBOOK_STALL_MINUTES", "0.05")  # 3 s without CPU work counts as a hang
    hung = _notebook(runs / "03_hung.ipynb", "import time\ntime.sleep(120)")
    assert runner.run_notebooks("smoke", [hung]) == 1
    out = capsys.readouterr().out
    assert "attempt 1 of 2" in out and "attempt 2 of 2" in out and "03_hung.ipynb hung twice" in out
    assert not runner.plan("smoke", [hung])[0].reuse
    monkeypatch.setenv("WORKBOOK_STALL_MINUTES", "soon")
    with pytest.raises(ValueError, match="WORKBOOK_STALL_MINUTES='soon'"):
        runner.run_notebooks("smoke", [hung])
