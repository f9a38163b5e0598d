"""``python -m helpers shrink``: options, the recipe end to end on a tiny model, and the same run under accelerate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers.recipes import shrink as S
from tests.test_models import tiny_tokenizer


def test_parse_target():
    assert S.parse_target("0.6") == 0.6 and S.parse_target("80M") == 80_000_000 and S.parse_target("1.5b") == 1_500_000_000
    assert S.parse_target("0.5", teacher_params=1000) == 500 and S.parse_target("300", teacher_params=1000) == 300
    for bad in ("sixty", "-0.3", "0.6x", ""):
        with pytest.raises(ValueError, match="not understood"):
            S.parse_target(bad)
    with pytest.raises(ValueError, match="fewer than the teacher"):
        S.parse_target("2000", teacher_params=1000)


@pytest.mark.parametrize("args, message", [
    (["--kind", "sideways"], "invalid choice"),
    (["--target-params", "lots"], "not understood"),
    (["--tokens", "100", "--block-size", "512"], "less than one optimizer step"),
    (["--data", "./missing.txt"], "no such file"),
    (["--learning-rate", "0"], "learning-rate"),
])
def test_bad_options_fail_before_any_model_loads(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("helpers.models.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    try:
        code = S.main(["--out", str(tmp_path / "o"), *args])
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.fixture
def tiny_setup(tiny_model, tmp_path):
    teacher = tiny_model(max_position_embeddings=64)
    folder = tmp_path / "teacher"
    teacher.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    g = torch.Generator().manual_seed(0)
    docs = [" ".join(f"t{int(i)}" for i in torch.randint(3, 128, (40,), generator=g)) for _ in range(60)]
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(docs))
    return folder, text


def _args(folder: Path, text: Path, out: Path, batch_size: int) -> list[str]:
    return ["--teacher", str(folder), "--data", str(text), "--out", str(out), "--target-params", "0.7",
            "--kind", "width", "--tokens", str(16 * 2 * 3), "--block-size", "16", "--batch-size", str(batch_size),
            "--calibration-samples", "8", "--eval-windows", "4", "--learning-rate", "0.01", "--bf16", "off"]


def test_shrink_end_to_end_on_a_tiny_model(tiny_setup, tmp_path):
    folder, text = tiny_setup
    assert S.main(_args(folder, text, tmp_path / "student", batch_size=2)) == 0
    out = tmp_path / "student"
    model = AutoModelForCausalLM.from_pretrained(out)  # stock transformers
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["command"] == "shrink" and recipe["metrics"]["params"] == sum(p.numel() for p in model.parameters())
    assert recipe["metrics"]["tokens_seen"] == 16 * 2 * 3
    assert "library_name: transformers" in (out / "README.md").read_text()
    assert not (tmp_path / ".student.checkpoints").exists()


def test_two_processes_under_accelerate_match_one(tiny_setup, tmp_path):
    folder, text = tiny_setup
    assert S.main(_args(folder, text, tmp_path / "one", batch_size=2)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # on a machine without GPUs, --multi_gpu starts torchrun processes that train with gloo on the CPU
    # (accelerate's --cpu would need mpirun for more than one process)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "helpers", "shrink",
           *_args(folder, text, tmp_path / "two", batch_size=1)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    one = AutoModelForCausalLM.from_pretrained(tmp_path / "one").state_dict()
    two = AutoModelForCausalLM.from_pretrained(tmp_path / "two").state_dict()
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    assert json.loads((tmp_path / "two" / "recipe.json").read_text())["metrics"]["tokens_seen"] == 16 * 2 * 3


def test_shrink_on_the_embedded_teacher(tmp_path):
    out = tmp_path / "student"
    assert S.main(["--out", str(out), "--target-params", "0.6", "--kind", "width", "--tokens", "128",
                   "--block-size", "64", "--calibration-samples", "8", "--eval-windows", "2"]) == 0
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["parent"] == "smollm2-135m-instruct" and 0.55 < recipe["metrics"]["params"] / recipe["metrics"]["teacher_params"] < 0.65
    assert AutoModelForCausalLM.from_pretrained(out).config.hidden_size < 576


def test_an_interrupted_shrink_resumes_from_its_checkpoints(tiny_setup, tmp_path, monkeypatch):
    folder, text = tiny_setup
    args = [*_args(folder, text, tmp_path / "resumed", batch_size=2), "--save-steps", "1"]

    def crash(*a, **k):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr("helpers.distill.save_distilled", crash)
    with pytest.raises(KeyboardInterrupt):
        S.main(args)
    checkpoints = tmp_path / ".resumed.checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*"))[-1] == "checkpoint-3"
    assert not (tmp_path / "resumed").exists()  # nothing half-written under the final name
    monkeypatch.undo()
    assert S.main([*args, "--resume"]) == 0
    assert S.main(_args(folder, text, tmp_path / "straight", batch_size=2)) == 0
    resumed = AutoModelForCausalLM.from_pretrained(tmp_path / "resumed").state_dict()
    straight = AutoModelForCausalLM.from_pretrained(tmp_path / "straight").state_dict()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], msg=name)
    assert not checkpoints.exists()


def test_shrink_from_a_cached_teacher_with_a_curve_and_a_card(tiny_setup, tmp_path):
    """``--cache-top-k`` distils from the teacher's top-k log-probs computed once (kept beside --out and reused),
    ``--curve-points`` records real-text perplexity during training, and the model card names the parent, the
    recipe and the metrics."""
    folder, text = tiny_setup
    args = [*_args(folder, text, tmp_path / "cached", batch_size=2), "--cache-top-k", "8", "--curve-points", "3",
            "--speed-repeats", "1"]
    assert S.main(args) == 0
    caches = list(tmp_path.glob(".teacher-top8-*.safetensors"))
    assert len(caches) == 1
    built = caches[0].stat().st_mtime_ns
    recipe = json.loads((tmp_path / "cached" / "recipe.json").read_text())
    assert [p["tokens_seen"] for p in recipe["realtext_curve"]] == [0, 32, 64, 96]
    m = recipe["metrics"]
    assert m["realtext_ppl_ratio"] == pytest.approx(m["realtext_ppl_student"] / m["realtext_ppl_teacher"], rel=1e-2)
    assert {"decode_speedup", "flop_reduction", "corpus_log_recovery", "train_seconds"} <= set(m)
    card = (tmp_path / "cached" / "README.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith("| real-text perplexity"))
    assert str(folder) in card and "top-8" in card and "float32" in card
    assert float(row.split("|")[3].split()[0]) == pytest.approx(m["realtext_ppl_student"], abs=0.01)
    assert "Intended use and limitations" in card
    AutoModelForCausalLM.from_pretrained(tmp_path / "cached")
    assert S.main([*args[:5], str(tmp_path / "again"), *args[6:]]) == 0  # the second student reuses the cache
    assert caches[0].stat().st_mtime_ns == built


def test_flops_per_token_counts_every_multiplied_weight(tiny_model):
    from helpers.recipes.card import flops_per_token

    model = tiny_model()
    c = model.config
    decoder = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    assert flops_per_token(model) == 2 * (decoder + c.vocab_size * c.hidden_size)
