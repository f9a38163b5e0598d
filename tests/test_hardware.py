"""The compute precision: measured once per CPU, cached, overridable, and refused when misspelled."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import hardware


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A CPU with native bf16, an empty cache in ``tmp_path`` and no override; the process-wide answer forgotten."""
    monkeypatch.setenv("WORKBOOK_CACHE", str(tmp_path))
    monkeypatch.delenv("WORKBOOK_BF16", raising=False)
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: True)
    hardware.cpu_precision.cache_clear()
    yield tmp_path
    hardware.cpu_precision.cache_clear()


def _fake_speeds(monkeypatch, fp32: float, bf16: float) -> list[int]:
    calls = []
    monkeypatch.setattr(hardware, "measure_cpu_precision", lambda: calls.append(1) or {"float32": fp32, "bfloat16": bf16})
    return calls


@pytest.mark.parametrize("fp32, bf16, expected", [
    (276.0, 158.0, torch.float32),   # AVX512-BF16 without AMX: bf16 slower
    (200.0, 210.0, torch.float32),   # bf16 barely faster: not worth its rounding
    (200.0, 420.0, torch.bfloat16),  # native bf16 that pays
])
def test_the_cpu_precision_is_the_measured_faster_one(fresh, monkeypatch, fp32, bf16, expected):
    _fake_speeds(monkeypatch, fp32, bf16)
    assert hardware.fast_dtype("cpu") == expected
    assert hardware.cpu_precision()["float32"] == fp32


def test_the_measurement_is_made_once_per_machine_and_cached(fresh, monkeypatch):
    calls = _fake_speeds(monkeypatch, 100.0, 300.0)
    assert hardware.fast_dtype("cpu") == torch.bfloat16
    hardware.cpu_precision.cache_clear()  # a new process
    assert hardware.fast_dtype("cpu") == torch.bfloat16
    assert len(calls) == 1
    cached = json.loads((fresh / "cpu_precision.json").read_text())
    (entry,) = cached.values()
    assert entry["dtype"] == "bfloat16" and f"{torch.get_num_threads()} threads" in next(iter(cached))


def test_a_cpu_without_native_bf16_computes_in_fp32_without_measuring(fresh, monkeypatch):
    calls = _fake_speeds(monkeypatch, 1.0, 100.0)
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: False)
    assert hardware.fast_dtype("cpu") == torch.float32 and not calls


def test_the_environment_overrides_the_measurement(fresh, monkeypatch):
    calls = _fake_speeds(monkeypatch, 276.0, 158.0)
    monkeypatch.setenv("WORKBOOK_BF16", "1")
    assert hardware.fast_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv("WORKBOOK_BF16", "0")
    assert hardware.fast_dtype("cpu") == torch.float32
    assert not calls
    with hardware.autocast("cpu"):
        assert not torch.is_autocast_cpu_enabled()
    monkeypatch.setenv("WORKBOOK_BF16", "yes")
    with pytest.raises(ValueError, match="WORKBOOK_BF16='yes'.*0 \\(fp32\\)"):
        hardware.fast_dtype("cpu")


def test_an_unwritable_cache_still_answers(fresh, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("WORKBOOK_CACHE", str(tmp_path / "file" / "below"))  # a folder under a file: cannot exist
    _fake_speeds(monkeypatch, 276.0, 158.0)
    assert hardware.fast_dtype("cpu") == torch.float32


def test_the_measurement_returns_both_speeds():
    speeds = hardware.measure_cpu_precision(seconds=0.01, rounds=1)
    assert set(speeds) == {"float32", "bfloat16"} and all(v > 0 for v in speeds.values())


def test_the_report_names_the_measured_speeds(monkeypatch):
    from helpers.workbook import report

    monkeypatch.delenv("WORKBOOK_BF16", raising=False)
    monkeypatch.setattr(report, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(report, "cpu_precision", lambda: {"dtype": "float32", "float32": 276.0, "bfloat16": 158.0})
    monkeypatch.setattr(report, "fast_dtype", lambda device=None: torch.float32)
    line = report.machine_line()
    assert "276 GFLOP/s in fp32, 158 in bf16" in line and line.endswith("computed in float32.")
