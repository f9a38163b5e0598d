"""Run records: metrics.json rows and the results table the README block is built from."""

from __future__ import annotations

import csv

from helpers import workbook as runs
from helpers.workbook import report
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


def _two_models(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WORKBOOK_RUNS", str(tmp_path))
    monkeypatch.setenv("WORKBOOK_CACHE", str(tmp_path / "no-cache"))  # no teacher config: nothing derived from it
    runs.record_metrics("teacher", "00_teacher_tour", {"params": 134_515_008, "heldout_ppl": 8.2612,
                                                      "decode_tokens_per_s": 31.25, "memory_mib": 812.46})
    runs.record_metrics("width 60%", "04_logit_distillation", {"params": 81_000_000, "heldout_ppl": 11.5,
                                                              "realtext_ppl": 19.004, "ppl_ratio": 1.392,
                                                              "log_recovery": 0.8734, "tokens_seen": 1_048_576})


def test_results_table_formats_and_marks_missing_values(tmp_path, monkeypatch):
    _two_models(tmp_path, monkeypatch)
    lines = runs.results_table(report.COLUMNS).splitlines()
    assert lines[0] == "| model | " + " | ".join(report.COLUMNS) + " |"
    teacher, student = lines[2], lines[3]
    # parent, method and non-embedding parameters: "–" without a saved checkpoint
    assert teacher == "| teacher | 00_teacher_tour | – | – | 134,515,008 | – | 8.26 | – | – | – | 31.2 | 812.5 | – |"
    assert student == ("| width 60% | 04_logit_distillation | – | – | 81,000,000 | – | 11.50 | 19.00 | 1.39 | 87.3% | – "
                       "| – | 1,048,576 |")
    assert all("|  |" not in line for line in lines[2:])  # no empty cell


def test_results_rows_and_csv_round_trip(tmp_path, monkeypatch):
    _two_models(tmp_path, monkeypatch)
    rows = runs.results_rows(report.COLUMNS)
    assert [r["model"] for r in rows] == ["teacher", "width 60%"]
    assert rows[1]["log_recovery"] == 0.8734 and rows[0]["log_recovery"] is None  # raw values, None where missing
    path = runs.write_results_csv(tmp_path / "results.csv", report.COLUMNS)
    assert path == tmp_path / "results.csv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "results.csv"]  # no temp file left
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["model", *report.COLUMNS, "decode_measured_on"]
        back = list(reader)
    assert back == [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows]
    assert float(back[1]["log_recovery"]) == 0.8734 and int(back[0]["params"]) == 134_515_008


def test_report_writes_the_csv(tmp_path, monkeypatch):
    _two_models(tmp_path, monkeypatch)
    monkeypatch.setenv("WORKBOOK_SCALE", "smoke")  # not laptop: leaves README and docs/figures alone
    assert report.main() == 0
    with open(tmp_path / "results.csv", newline="") as f:
        assert [r["model"] for r in csv.DictReader(f)] == ["teacher", "width 60%"]
    assert "87.3%" in (tmp_path / "report.md").read_text()


def test_report_rows_name_parent_method_and_non_embedding_params_and_every_model_reloads(tiny_model, tmp_path,
                                                                                            monkeypatch):
    from transformers import AutoModelForCausalLM

    from helpers.models import save_model
    from helpers.workbook import model_dir, model_facts, record_metrics
    from tests.test_models import tiny_tokenizer

    monkeypatch.setenv("WORKBOOK_RUNS", str(tmp_path))
    monkeypatch.setenv("WORKBOOK_SCALE", "smoke")
    monkeypatch.setenv("WORKBOOK_CACHE", str(tmp_path / "cache"))  # a teacher cache holding only its config
    model = tiny_model()
    (tmp_path / "cache" / "smollm2-135m-instruct").mkdir(parents=True)
    model.config.to_json_file(tmp_path / "cache" / "smollm2-135m-instruct" / "config.json")
    params = sum(p.numel() for p in model.parameters())
    save_model(model, tiny_tokenizer(), model_dir("tiny_healed"), {"parent": "/x/width_pruned", "steps": [{"method": "distill"}]})
    record_metrics("tiny_healed", "nb", {"params": params, "heldout_ppl": 9.5})
    record_metrics("teacher", "nb", {"params": 10, "heldout_ppl": 8.0})  # no checkpoint: facts stay empty
    assert model_facts("teacher") == {}
    assert report.main() == 0
    with open(tmp_path / "results.csv", newline="") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    healed = rows["tiny_healed"]
    assert (healed["parent"], healed["method"]) == ("width_pruned", "distill")
    assert int(healed["non_embedding_params"]) == params - 128 * 64  # tied embedding counted once
    assert rows["teacher"]["parent"] == ""
    c = model.config  # weights + KV cache of 320 tokens at batch 1, fp32, by hand
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 320
    assert float(healed["memory_mib"]) == round((params + kv) * 4 / 2**20, 1)
    assert float(rows["teacher"]["memory_mib"]) == round((10 + kv) * 4 / 2**20, 1)  # config from the teacher cache
    for name in rows:  # every model the table lists with a checkpoint reloads with stock transformers
        if (model_dir(name) / "config.json").is_file():
            AutoModelForCausalLM.from_pretrained(model_dir(name))


def _checkpoint(name: str, layers: int) -> None:
    """A saved model's recipe and config (all the results rows read of a checkpoint), without weights."""
    import json

    from helpers.workbook import model_dir

    folder = model_dir(name)
    folder.mkdir(parents=True)
    config = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": layers,
              "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "recipe.json").write_text(json.dumps({"parent": "/x/teacher", "method": "kd"}))


def test_an_untimed_model_shows_the_speed_of_a_timed_twin_architecture_marked(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBOOK_RUNS", str(tmp_path))
    monkeypatch.setenv("WORKBOOK_CACHE", str(tmp_path / "no-cache"))
    for name, layers in (("early", 4), ("timed_elsewhere", 4), ("timed_here", 4), ("untimed", 4), ("other", 2)):
        _checkpoint(name, layers)
    runs.record_metrics("early", "03", {"params": 1000, "decode_tokens_per_s": 40.0})
    runs.record_metrics("timed_elsewhere", "04", {"params": 1000, "decode_tokens_per_s": 50.0})
    runs.record_metrics("other", "05", {"params": 900})  # a different architecture: nothing to borrow
    runs.record_metrics("timed_here", "05", {"params": 1000, "decode_tokens_per_s": 60.0})
    runs.record_metrics("untimed", "05", {"params": 1000})
    runs.record_metrics("untimed @ 512 tokens", "06", {"params": 1000})  # a baseline row is its checkpoint
    rows = {r["model"]: r for r in runs.results_rows(report.COLUMNS)}
    assert (rows["untimed"]["decode_tokens_per_s"], rows["untimed"]["decode_measured_on"]) == (60.0, "timed_here")
    assert rows["untimed @ 512 tokens"]["decode_measured_on"] == "early"  # no twin in 06: the first one recorded
    assert rows["timed_elsewhere"]["decode_measured_on"] == "timed_elsewhere"  # a timed model keeps its own figure
    assert (rows["other"]["decode_tokens_per_s"], rows["other"]["decode_measured_on"]) == (None, None)
    table = {line.split(" | ")[0][2:]: line for line in runs.results_table(report.COLUMNS).splitlines()[2:]}
    speed = 1 + report.COLUMNS.index("decode_tokens_per_s")
    assert [table[n].split(" | ")[speed] for n in ("untimed", "timed_here", "other")] == ["≈60.0", "60.0", "–"]
    with open(runs.write_results_csv(tmp_path / "results.csv", report.COLUMNS), newline="") as f:
        back = {r["model"]: r for r in csv.DictReader(f)}
    assert (back["untimed"]["decode_tokens_per_s"], back["untimed"]["decode_measured_on"]) == ("60.0", "timed_here")
