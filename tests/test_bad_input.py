"""Bad input a careless user gives: each case stops before any work with a message that says what was wrong,
where, and what is allowed (or, for reasonable values, is accepted)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from helpers import data, evaluate, models
from helpers.architecture import UnsupportedArchitectureError
from helpers.distill import DistillConfig
from helpers.importance import estimate_importance, layer_importance, magnitude_importance, random_importance
from helpers.io import recover_folder, write_folder_atomically
from helpers.pruning import candidate_architectures, count_parameters, prune_depth, prune_width

from .test_models import tiny_tokenizer

# ----------------------------------------------------------------------------------------------------
# Silent nonsense


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_stop_importance_naming_the_layer(tiny_model, tiny_batches, value):
    model = tiny_model()
    with torch.no_grad():
        model.model.layers[2].mlp.up_proj.weight[3, 5] = value
    with pytest.raises(FloatingPointError, match=r"decoder layer 2.*NaN or inf"):
        estimate_importance(model, tiny_batches, progress=False)
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        layer_importance(model, tiny_batches, criteria=["bi"], progress=False)
    with pytest.raises(FloatingPointError, match=r"decoder layer 2"):
        magnitude_importance(model)


def test_pruning_refuses_non_finite_scores(tiny_model):
    model = tiny_model()
    scores = random_importance(model)
    scores.neurons[1, 7] = float("nan")
    with pytest.raises(FloatingPointError, match=r"neurons scores of decoder layer 1"):
        prune_width(model, scores, intermediate_size=64)


def test_layer_map_without_a_hidden_loss_is_refused():
    with pytest.raises(ValueError, match="layer_map.*without hidden_loss it would be ignored"):
        DistillConfig(layer_map=[(0, 0)])
    with pytest.raises(ValueError, match="layer_map"):
        DistillConfig(layer_map="last_k")
    DistillConfig(hidden_loss="cosine", layer_map=[(0, 0)])  # with the loss it means something


# ----------------------------------------------------------------------------------------------------
# Misleading messages


def test_a_missing_relative_path_is_not_treated_as_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no model folder at 'runs/mymodel' \(resolved to '/"):
        models.load_model("runs/mymodel")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"no model folder at 'nothere/mymodel'.*not in the local Hugging Face "
                                                 r"cache and the Hub is offline"):
        models.load_model("nothere/mymodel")
    with pytest.raises(FileNotFoundError, match="no model folder"):
        models.load_model("./mymodel")


def test_a_folder_without_tokenizer_files_says_so(tiny_model, tmp_path):
    tiny_model().save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"has no tokenizer files.*tokenizer.save_pretrained"):
        models.load_model(str(tmp_path / "m"))


def test_a_broken_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": "broken\n')
    with pytest.raises(ValueError, match=r"docs.jsonl, line 3: not valid JSON"):
        data.load_texts(str(path))
    path.write_text('{"text": "fine"}\n["a list"]\n')
    with pytest.raises(ValueError, match=r"line 2: a JSON list, not an object"):
        data.load_texts(str(path))
    path.write_text('{"text": "fine"}\n{"body": "other field"}\n')
    with pytest.raises(KeyError, match=r"record 2 has no 'text' field.*text_field="):
        data.load_texts(str(path))


def test_a_gz_that_is_not_gzip_names_the_file(tmp_path):
    for name in ("docs.jsonl.gz", "docs.txt.gz"):
        (tmp_path / name).write_text('{"text": "plain, not gzip"}\n')
        with pytest.raises(ValueError, match=rf"{name} ends in .gz but is not a complete gzip file"):
            data.load_texts(str(tmp_path / name))
    truncated = gzip.compress(b'{"text": "a"}\n' * 100)[:40]
    (tmp_path / "cut.jsonl.gz").write_bytes(truncated)
    with pytest.raises(ValueError, match="cut.jsonl.gz ends in .gz but is not a complete gzip file"):
        data.load_texts(str(tmp_path / "cut.jsonl.gz"))


def test_a_missing_local_data_file_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No file or folder at './nothing.jsonl'"):
        data.load_texts("./nothing.jsonl")


def test_token_ids_outside_the_vocabulary_are_refused(tiny_model, tiny_batches):
    model = tiny_model()
    bad = torch.full((2, 8), 128)  # vocab is 128: ids 0..127
    with pytest.raises(ValueError, match=r"token id 128, outside the model's vocabulary \[0, 128\)"):
        evaluate.perplexity(model, bad)
    with pytest.raises(ValueError, match="calibration batch holds token id 128"):
        estimate_importance(model, [bad], progress=False)
    with pytest.raises(ValueError, match="token id -1"):
        layer_importance(model, [bad - 129], criteria=["bi"], progress=False)


# ----------------------------------------------------------------------------------------------------
# Reasonable values refused / unreasonable ones accepted


@pytest.mark.parametrize("size", [np.int64(64), torch.tensor(64), np.int32(64)])
def test_numpy_and_0d_torch_integers_are_sizes(tiny_model, size):
    model = tiny_model()
    pruned = prune_width(model, random_importance(model), intermediate_size=size)
    assert pruned.config.intermediate_size == 64 and type(pruned.config.intermediate_size) is int


@pytest.mark.parametrize("drop", [1, np.int64(1), torch.tensor(1), [np.int64(1), torch.tensor(2)]])
def test_layers_to_drop_takes_one_index_or_integers_of_any_kind(tiny_model, drop):
    model = tiny_model()
    assert prune_depth(model, layers_to_drop=drop).config.num_hidden_layers == 4 - len(np.atleast_1d(drop))


@pytest.mark.parametrize("kwargs,match", [
    ({"intermediate_size": 64.0}, r"intermediate_size=64.0 \(float\) must be an integer"),
    ({"intermediate_size": True}, r"intermediate_size=True \(bool\) must be an integer"),
    ({"hidden_size": torch.tensor(32.0)}, "hidden_size=.* must be an integer"),
])
def test_floats_and_bools_are_not_sizes(tiny_model, kwargs, match):
    model = tiny_model()
    with pytest.raises(TypeError, match=match):
        prune_width(model, random_importance(model), **kwargs)
    with pytest.raises(TypeError, match="layers_to_drop=1.5"):
        prune_depth(model, layers_to_drop=[1.5])
    with pytest.raises(TypeError, match="must be an integer"):
        prune_depth(model, num_layers=2.0, importance=random_importance(model))


# ----------------------------------------------------------------------------------------------------
# Interrupted saves


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_kill_between_the_renames_is_recovered_on_load(tiny_model, tmp_path):
    dest = tmp_path / "student"
    models.save_model(tiny_model(), tiny_tokenizer(), dest, {"parent": "a"})
    dest.rename(tmp_path / f".student.old-{_dead_pid()}")  # what a kill between the two renames leaves
    (tmp_path / f".student.tmp-{_dead_pid()}-abc").mkdir()  # and a half-written new version
    model, _ = models.load_model(str(dest))
    assert model.config.num_hidden_layers == 4 and models.load_recipe(dest)["parent"] == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"], "leftovers of dead processes are cleaned"


def test_a_save_cleans_leftovers_and_gives_normal_permissions(tiny_model, tmp_path):
    dest = tmp_path / "student"
    (tmp_path / f".student.tmp-{_dead_pid()}-xyz").mkdir()
    (tmp_path / f".student.old-{_dead_pid()}").mkdir()  # the swap finished; its cleanup did not
    dest.mkdir()
    models.save_model(tiny_model(), tiny_tokenizer(), dest, {"parent": "b"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o777 & ~umask, "mkdtemp's 0700 must not survive the rename"


def test_a_running_writer_is_left_alone(tmp_path):
    live = tmp_path / f".x.tmp-{os.getppid()}-abc"  # a process that is alive (our parent)
    live.mkdir()
    recover_folder(tmp_path / "x")
    assert live.exists()
    write_folder_atomically(tmp_path / "x", lambda tmp: (tmp / "f").write_text("1"))
    assert live.exists() and (tmp_path / "x" / "f").read_text() == "1"


# ----------------------------------------------------------------------------------------------------
# Unsupported families


def test_unsupported_families_get_the_same_error_everywhere(tiny_batches):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=128, n_positions=64))
    calls = {
        "count_parameters(config)": lambda: count_parameters(gpt2.config),
        "count_parameters(model)": lambda: count_parameters(gpt2),
        "random_importance": lambda: random_importance(gpt2),
        "magnitude_importance": lambda: magnitude_importance(gpt2),
        "estimate_importance": lambda: estimate_importance(gpt2, tiny_batches, progress=False),
        "layer_importance": lambda: layer_importance(gpt2, tiny_batches, progress=False),
        "prune_width": lambda: prune_width(gpt2, None, intermediate_size=8),
        "prune_depth": lambda: prune_depth(gpt2, layers_to_drop=[0]),
        "candidate_architectures": lambda: candidate_architectures(gpt2.config, 1000),
        "model_summary": lambda: evaluate.model_summary(gpt2),
        "parameters_by_component": lambda: evaluate.parameters_by_component(gpt2),
    }
    for name, call in calls.items():
        with pytest.raises(UnsupportedArchitectureError, match="'gpt2'.*Supported Llama-style families"):
            call()
            pytest.fail(f"{name} accepted a gpt2 model")
