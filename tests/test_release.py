"""``make students`` (``python -m helpers students``): both presets end to end at the smoke budget, an interrupted
build that resumes, the table, the trade-off plot and the model cards."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

from helpers.recipes import release as R
from helpers.recipes.shrink import ShrinkOptions
from tests.test_models import tiny_tokenizer


@pytest.fixture
def tiny_teacher(tiny_model, tmp_path):
    """A 10-layer tiny Llama with a tokenizer, saved as a local folder (depth presets need layers to drop)."""
    folder = tmp_path / "teacher"
    tiny_model(num_hidden_layers=10, max_position_embeddings=128).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_presets_are_valid_shrink_options(tmp_path):
    from helpers.recipes.shrink import check_options

    for name in R.PRESETS:
        for smoke in (False, True):
            opts = R.preset_options(name, tmp_path, smoke)
            assert isinstance(opts, ShrinkOptions) and opts.out == tmp_path / name
            check_options(opts)
    with pytest.raises(ValueError, match="student-80"):
        R.preset_options("student-50", tmp_path)


def test_students_build_resume_and_report(tiny_teacher, tmp_path, monkeypatch):
    out = tmp_path / "students"
    import helpers.recipes.shrink as S

    calls = []
    original = S.shrink

    def crash_on_the_second(opts):
        calls.append(opts.out.name)
        if len(calls) == 2:
            monkeypatch.setattr("helpers.distill.save_distilled", _crash)
        return original(opts)

    monkeypatch.setattr(S, "shrink", crash_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        R.main(["--smoke", "--out", str(out), "--teacher", str(tiny_teacher)])
    first = out / "student-80"
    assert (first / "recipe.json").is_file() and not (out / "student-60").exists()
    assert any((out / ".student-60.checkpoints").glob("checkpoint-*"))  # what finished stays
    kept = (first / "model.safetensors").stat().st_mtime_ns
    monkeypatch.undo()
    assert R.main(["--smoke", "--out", str(out), "--teacher", str(tiny_teacher)]) == 0
    assert (first / "model.safetensors").stat().st_mtime_ns == kept  # finished student kept, not rebuilt
    for name in R.PRESETS:
        folder = out / name
        AutoModelForCausalLM.from_pretrained(folder)  # stock transformers
        recipe = json.loads((folder / "recipe.json").read_text())
        assert recipe["parent"] == str(tiny_teacher) and recipe["options"]["kind"] == R.PRESETS[name]["kind"]
        card = (folder / "README.md").read_text()
        assert str(tiny_teacher) in card and "real-text perplexity" in card and "Recipe" in card
        assert "95% band [" in card
    table = (out / "students.md").read_text()
    assert "`student-80`" in table and "`student-60`" in table and "## Recipes" in table
    assert (out / "students_tradeoff.png").stat().st_size > 0
    assert not any((out).glob(".student-*.checkpoints"))
    for name in R.PRESETS:  # every ratio has its band, around the point estimate, and the table shows the verdicts
        m = json.loads((out / name / "recipe.json").read_text())["metrics"]
        for which in ("corpus", "realtext"):
            low, high = m[f"{which}_ppl_ratio_band"]
            assert low <= m[f"{which}_ppl_ratio"] * 1.001 and high >= m[f"{which}_ppl_ratio"] * 0.999
    assert "real-text target" in table and ("met (<=" in table or "not met (>" in table or "within noise" in table)

    # a student saved before bands were recorded gets them measured again, the same as recorded at the end of its run
    recipe_path = out / "student-60" / "recipe.json"
    recipe = json.loads(recipe_path.read_text())
    recorded = {w: recipe["metrics"].pop(f"{w}_ppl_ratio_band") for w in ("corpus", "realtext")}
    recipe_path.write_text(json.dumps(recipe))
    again = R.ensure_bands(out / "student-60")["metrics"]
    assert {w: again[f"{w}_ppl_ratio_band"] for w in recorded} == recorded
    assert json.loads(recipe_path.read_text())["metrics"]["realtext_ppl_ratio_band"] == recorded["realtext"]
    recipe["metrics"]["corpus_ppl_student"] *= 2  # not what these weights give: refused, nothing written
    recipe_path.write_text(json.dumps(recipe))
    with pytest.raises(ValueError, match="measured again"):
        R.ensure_bands(out / "student-60")
    assert "corpus_ppl_ratio_band" not in json.loads(recipe_path.read_text())["metrics"]


def test_ratio_band_is_the_exponentiated_paired_interval():
    import math

    from helpers.evaluate import Perplexity
    from helpers.recipes.card import ratio_band

    def result(nll):
        return Perplexity(math.exp(sum(nll) / 40), sum(nll) / 40, 40, 4, 11, tuple(nll), (10,) * 4)

    teacher = result([20.0, 22.0, 18.0, 25.0])
    low, high = ratio_band(result([n + 10 * 0.5 for n in teacher.window_nll]), teacher)  # +0.5 nats on every token
    assert low == pytest.approx(math.exp(0.5)) and high == pytest.approx(math.exp(0.5))
    low, high = ratio_band(result([25.0, 22.0, 30.0, 25.0]), teacher)  # worse on some windows only
    assert 1.0 <= low < high


def test_target_verdicts_need_the_whole_band_on_one_side():
    assert R.target_verdict(1.2, [1.1, 1.29], 1.3).startswith("met")
    assert R.target_verdict(1.5, [1.31, 1.7], 1.3).startswith("not met")
    assert R.target_verdict(1.25, [1.1, 1.4], 1.3).startswith("within noise")
    assert R.target_verdict(1.4, None, 1.3).startswith("not met")


def _crash(*args, **kwargs):
    raise KeyboardInterrupt("killed while saving")
