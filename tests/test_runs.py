"""Run records: metrics.json rows and the results table the README block is built from."""

from __future__ import annotations

from helpers import runs
from helpers.evaluate import Perplexity


def test_baseline_rows_keep_the_full_split_row(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBOOK_RUNS", str(tmp_path))
    runs.record_metrics("teacher", "00_teacher_tour", {"params": 10, "heldout_ppl": 8.26, "ppl_tokens": 54166})
    key = runs.record_baseline("teacher", "04_logit_distillation", 10, Perplexity(8.51, 2.14, 20440, 40, 512))
    records = runs.load_metrics()
    assert key == "teacher @ 20,440 tokens"
    assert records["teacher"]["heldout_ppl"] == 8.26 and records["teacher"]["notebook"] == "00_teacher_tour"
    assert records[key]["heldout_ppl"] == 8.51 and records[key]["ppl_tokens"] == 20440
    assert records[key]["tokens_seen"] == 0
    table = runs.results_table(("notebook", "heldout_ppl", "ppl_tokens"))
    assert "| teacher @ 20,440 tokens |" in table and "| teacher |" in table
