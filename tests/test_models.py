"""Loading, the architecture adapter, model_summary(), saving with a recipe, and the cache's integrity checks."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
from tokenizers import Tokenizer, models as tk_models, pre_tokenizers

from helpers import architecture as arch
from helpers import evaluate as D
from helpers import models
from helpers.io import sha256_file


def tiny_tokenizer(vocab_size: int = 128) -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"t{i}": i for i in range(3, vocab_size)}
    tok = Tokenizer(tk_models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    return fast


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_adapter_and_describe_count_every_parameter(tiny_model, family):
    model = tiny_model(family)
    assert arch.check_supported(model) == family
    assert len(arch.layers(model)) == 4
    info = D.model_summary(model)
    assert info["params_total"] == sum(p.numel() for p in model.parameters())
    assert info["params_embedding"] == 128 * 64  # tied: counted once
    assert info["head_dim"] == 8 and info["tied_embeddings"]
    assert set(info["params_by_component"]) >= {"embed_tokens", "q_proj", "down_proj", "norms"}


def test_describe_untied_counts_lm_head(tiny_model):
    model = tiny_model(tie_word_embeddings=False)
    info = D.model_summary(model)
    assert not info["tied_embeddings"]
    assert info["params_embedding"] == 2 * 128 * 64
    assert D.plot_parameters(model) is not None


def test_unsupported_architecture_names_supported_families():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(arch.UnsupportedArchitectureError, match="llama, mistral, qwen2"):
        D.model_summary(gpt2)


def test_unknown_model_name_lists_aliases_and_mentions_internet():
    with pytest.raises(ValueError, match="smollm2-135m-instruct") as err:
        models.resolve("no-such-model")
    assert "internet" in str(err.value)


def test_local_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        models.resolve(str(tmp_path))


def test_unsupported_local_checkpoint_refused_before_weights_load(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path)
    with pytest.raises(arch.UnsupportedArchitectureError, match="gpt2"):
        models.load_model(str(tmp_path))


def test_save_with_recipe_reloads_with_stock_transformers(tiny_model, tmp_path):
    model, tok = tiny_model(), tiny_tokenizer()
    dest = models.save_model(model, tok, tmp_path / "student", {"parent": "tiny", "steps": [{"op": "none"}]})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp folder left behind"
    again = AutoModelForCausalLM.from_pretrained(dest)
    ids = torch.randint(3, 128, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    recipe = models.load_recipe(dest)
    assert recipe["parent"] == "tiny" and recipe["steps"] == [{"op": "none"}] and "created" in recipe
    # a child of a saved model carries its parent's recipe (lineage)
    child = models.save_model(model, tok, tmp_path / "child", {"parent": str(dest), "steps": []})
    assert models.load_recipe(child)["parent_recipe"]["parent"] == "tiny"
    # our loader reads it too (local folder path)
    loaded, loaded_tok = models.load_model(str(dest))
    assert loaded_tok.chat_template and not loaded.training


def test_failed_save_leaves_nothing_behind(tiny_model, tmp_path):
    model, tok = tiny_model(), tiny_tokenizer()
    dest = models.save_model(model, tok, tmp_path / "m", {"parent": "a"})

    class Boom(RuntimeError):
        pass

    def fill(_tmp):
        raise Boom

    with pytest.raises(Boom):
        models.write_folder_atomically(dest, fill)
    assert models.load_recipe(dest)["parent"] == "a", "the existing artifact must survive a failed rewrite"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def _manifest_of_every_file(folder):
    files = {p.name: sha256_file(p) for p in folder.iterdir() if p.is_file() and p.name != models.MANIFEST_FILE}
    (folder / models.MANIFEST_FILE).write_text(json.dumps({"sha256": files}))


def test_corrupt_cache_is_detected(tiny_model, tmp_path, monkeypatch):
    """A cache whose weights do not match the manifest is rebuilt, not trusted."""
    monkeypatch.setenv("WORKBOOK_CACHE", str(tmp_path))
    folder = tmp_path / models.DEFAULT_TEACHER
    model, tok = tiny_model(), tiny_tokenizer()
    models.save_model(model, tok, folder, {})
    weights = folder / "model.safetensors"
    (folder / models.MANIFEST_FILE).write_text(json.dumps({"sha256": {"model.safetensors": sha256_file(weights)}}))
    assert not models._cache_is_valid(folder), "a manifest that covers only the weights is not trusted"
    _manifest_of_every_file(folder)
    assert models._cache_is_valid(folder)
    with open(weights, "r+b") as f:  # flip a byte in the middle: a corrupt/partial copy
        f.seek(weights.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    assert not models._cache_is_valid(folder)
    (folder / models.MANIFEST_FILE).unlink()
    assert not models._cache_is_valid(folder), "a cache without its manifest is partial"

    calls = []
    monkeypatch.setattr(models, "_load_gguf", lambda alias: calls.append(alias) or (model, tok))
    rebuilt = models.cached_teacher_folder()
    assert calls == [models.DEFAULT_TEACHER] and models._cache_is_valid(rebuilt)
    listed = set(json.loads((rebuilt / models.MANIFEST_FILE).read_text())["sha256"])
    assert listed == {p.name for p in rebuilt.iterdir()} - {models.MANIFEST_FILE}
    assert {"config.json", "tokenizer_config.json", "model.safetensors"} <= listed
    calls.clear()
    for name in ("config.json", "tokenizer_config.json"):  # not only the weights: every file is covered
        path = rebuilt / name
        original = path.read_text()
        path.write_text(original.replace("}", ', "edited": 1}', 1))
        assert not models._cache_is_valid(rebuilt), f"an edited {name} must invalidate the cache"
        path.write_text(original)
    (rebuilt / "stray.txt").write_text("x")
    assert not models._cache_is_valid(rebuilt), "a file the manifest does not list must invalidate the cache"
    (rebuilt / "stray.txt").unlink()
    assert models._cache_is_valid(rebuilt)
    models.cached_teacher_folder()
    assert calls == [], "a valid cache is not rebuilt"
