"""Text sources: the embedded corpus, local files and folders, and ``datasets`` names, all as lists of documents.

One entry point, :func:`load_texts`, serves every source:

- ``"embedded"``: the teacher-generated corpus in ``data/corpus`` (``train`` / ``heldout`` splits);
- a local file or folder: ``.txt`` (one document per blank-line-separated paragraph block) or ``.jsonl``
  (a ``text`` field; ``.gz`` allowed), or a folder saved by ``datasets.Dataset.save_to_disk``;
- ``"python-reference"`` (:data:`REAL_TEXT`): real text that ships with Python itself, see :func:`python_reference`;
- any ``datasets`` name, e.g. ``"wikitext:wikitext-2-raw-v1"`` (``name:config``), needing internet.

Bad files fail with the file name and line: a broken JSONL line, a ``.gz`` that is not gzip, a text that is not
UTF-8, a row without the text field.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Iterator

from ..io import repo_root

__all__ = ["SPLITS", "REAL_TEXT", "data_dir", "corpus_path", "read_jsonl", "load_records", "python_reference",
           "load_texts"]

SPLITS = ("train", "heldout")
REAL_TEXT = "python-reference"  # the named real-text source: CPython's language reference
_TEXT_SUFFIXES = (".txt", ".jsonl")


def data_dir() -> Path:
    """The embedded data folder: ``$WORKBOOK_DATA`` or ``<repo>/data``."""
    return Path(os.environ.get("WORKBOOK_DATA", repo_root() / "data"))


def corpus_path(split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; the embedded corpus has {SPLITS}.")
    path = data_dir() / "corpus" / f"{split}.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"The embedded corpus file {path} is missing. Rebuild it with `make corpus` "
            "(the teacher generates it; ~40 min on 2 CPU cores), or restore it with `git checkout data/`."
        )
    return path


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file, gunzipped when it ends in ``.gz``; errors name the file."""
    opener = gzip.open if path.suffix == ".gz" else open
    n = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                yield n, line
    except (gzip.BadGzipFile, zlib.error, EOFError) as err:
        raise ValueError(f"{path} ends in .gz but is not a complete gzip file ({err}); "
                         "compress it with gzip, or drop the .gz suffix if it is plain text.") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}, line {n + 1}: not UTF-8 text ({err}); re-encode the file as UTF-8.") from err


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a ``.jsonl`` (or ``.jsonl.gz``) file, one per non-empty line.

    ``ValueError`` naming the file and line for a line that is not a JSON object."""
    path = Path(path)
    rows = []
    for n, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {n}: not valid JSON ({err.msg} at column {err.colno}): "
                             f"{line.strip()[:80]!r}. Each line of a .jsonl file must be one JSON object.") from err
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {n}: a JSON {type(row).__name__}, not an object; "
                             'each line must be an object such as {"text": "..."}.')
        rows.append(row)
    return rows


def load_records(split: str = "train") -> list[dict]:
    """Embedded corpus records: ``id, topic, style, prompt, split, text, n_tokens, finished``."""
    return read_jsonl(corpus_path(split))


def python_reference(split: str = "train") -> list[str]:
    """The ``"python-reference"`` documents: CPython's language-reference topics, offline.

    CPython ships the text of its language reference (the topics ``help("topics")`` shows) as
    ``pydoc_data.topics.topics`` (topic -> text), under the Python Software Foundation License. The documents are
    the topics' texts sorted by topic name, each distinct text once (``if`` and ``else`` share one page, which must
    not land in both splits); document ``i`` is ``"heldout"`` when ``i % 5 == 4``, ``"train"`` otherwise, so the
    split is deterministic for a given Python version (the text follows it).

    It is a fair "real text" check: human-written, never produced by the teacher, and of a different distribution
    (reference prose with grammar rules and code snippets) from the teacher's chat answers the workbook trains on,
    so it shows what compression costs outside the distillation data.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; {REAL_TEXT!r} has {SPLITS}.")
    from pydoc_data.topics import topics  # standard library; absent only from stripped Python builds

    texts = list(dict.fromkeys(topics[name].strip() for name in sorted(topics)))  # distinct, in name order
    return [t for i, t in enumerate(texts) if (i % 5 == 4) == (split == "heldout")]


def _texts_from_jsonl(path: Path, text_field: str) -> list[str]:
    rows = read_jsonl(path)
    for i, r in enumerate(rows):
        if not isinstance(r.get(text_field), str):
            problem = "has no" if text_field not in r else "has a non-string"
            raise KeyError(f"{path}: record {i + 1} {problem} {text_field!r} field (fields: {sorted(r)}); "
                           "pass text_field= to name the field that holds the text.")
    return [r[text_field] for r in rows]


def _texts_from_folder(path: Path, text_field: str) -> list[str]:
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[next(iter(ds))]
        if text_field not in ds.column_names:
            raise KeyError(f"The dataset at {path} has no {text_field!r} column (columns: {ds.column_names}).")
        return list(ds[text_field])
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.removesuffix(".gz").endswith(_TEXT_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"{path} holds no .txt/.jsonl files (optionally .gz) and is not a saved dataset.")
    return [t for p in files for t in _texts_from_path(p, text_field)]


def _texts_from_path(path: Path, text_field: str) -> list[str]:
    if path.is_dir():
        return _texts_from_folder(path, text_field)
    name = path.name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        return _texts_from_jsonl(path, text_field)
    if name.endswith(".txt"):
        text = "".join(line for _, line in _lines(path))
        return [d.strip() for d in text.split("\n\n") if d.strip()]
    raise ValueError(f"Unsupported file {path}; use .txt, .jsonl (optionally .gz) or a saved dataset folder.")


def load_texts(source: str = "embedded", split: str = "train", text_field: str = "text") -> list[str]:
    """Documents from ``source`` (see module docstring). ``split`` names the embedded/real-text/datasets split."""
    if source == "embedded":
        return [r["text"] for r in load_records(split)]
    if source == REAL_TEXT:
        return python_reference(split)
    path = Path(source).expanduser()
    if path.exists():
        return _texts_from_path(path, text_field)
    if source.startswith(("/", ".", "~")) or path.suffix in (".txt", ".jsonl", ".gz"):
        raise FileNotFoundError(f"No file or folder at {source!r} (resolved to {str(path.resolve())!r}). Use "
                                f"'embedded', {REAL_TEXT!r}, a local .txt/.jsonl file or folder, or a `datasets` name.")
    import datasets  # a Hub dataset name: needs internet (or a filled HF cache)

    name, _, config = source.partition(":")
    hf_split = {"heldout": "validation"}.get(split, split)
    try:
        ds = datasets.load_dataset(name, config or None, split=hf_split)
    except Exception as err:  # noqa: BLE001 - re-raised with guidance
        raise ValueError(
            f"Could not load {source!r} as a local path or a `datasets` name ({err}). Use 'embedded', a local "
            ".txt/.jsonl file or folder, or a Hub dataset such as 'wikitext:wikitext-2-raw-v1' (needs internet)."
        ) from err
    return [t for t in ds[text_field] if t and t.strip()]
