"""Files that are never half-written: atomic folders and files, stale-leftover recovery, checksums, the repo root.

Every artifact the workbook writes (models, the teacher cache, metrics, importance scores, figures, the corpus)
goes through these functions, so a process killed mid-save leaves either the old artifact or the new one under
the final name, never a mix:

- a folder is filled in a hidden temp folder ``.<name>.tmp-<pid>-<random>`` beside it, then renamed; an existing
  folder is first renamed to ``.<name>.old-<pid>`` and removed after the swap;
- a file is written to ``.<name>.tmp-<pid>`` beside it, then ``os.replace``-d over the final name.

A kill between the two renames of a folder swap would leave the artifact only under its ``.old-`` name:
:func:`recover_folder` (called by every save and load through this module) renames it back, and removes
temp leftovers of processes that are no longer running.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["repo_root", "recover_folder", "write_folder_atomically", "write_file_atomically",
           "write_text_atomically", "write_json_atomically", "sha256_file"]

_MARKER = "pyproject.toml"
_PROJECT = 'name = "prune-distill-workbook"'


def repo_root() -> Path:
    """The repository root: ``$WORKBOOK_ROOT``, else the nearest parent of this package holding the project's
    ``pyproject.toml``, else the current directory (an installed, non-editable package)."""
    if os.environ.get("WORKBOOK_ROOT"):
        return Path(os.environ["WORKBOOK_ROOT"]).expanduser()
    for parent in Path(__file__).resolve().parents:
        marker = parent / _MARKER
        if marker.is_file() and _PROJECT in marker.read_text(errors="replace"):
            return parent
    return Path.cwd()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftover_pid(name: str, dest_name: str, kind: str) -> int | None:
    """``.<dest>.<kind>-<pid>...`` -> pid, else None."""
    prefix = f".{dest_name}.{kind}-"
    if not name.startswith(prefix):
        return None
    digits = name[len(prefix):].split("-", 1)[0]
    return int(digits) if digits.isdigit() else None


def recover_folder(dest: str | Path) -> Path:
    """Repair what an interrupted atomic write of ``dest`` left beside it; returns ``dest``.

    - ``dest`` missing but a ``.<name>.old-<pid>`` there: the swap was killed between its renames; the old
      artifact is renamed back to ``dest`` (it was complete: it had been the final artifact);
    - ``.<name>.old-*`` while ``dest`` exists: the swap finished, the removal did not; removed;
    - ``.<name>.tmp-<pid>*`` of a process that is no longer running: an unfinished write; removed.
    """
    dest = Path(dest)
    parent = dest.parent
    if not parent.is_dir():
        return dest
    for entry in sorted(parent.iterdir()):
        pid = _leftover_pid(entry.name, dest.name, "old")
        if pid is not None and (pid == os.getpid() or not _pid_alive(pid)):
            if not dest.exists():
                entry.rename(dest)
            else:
                _remove(entry)
            continue
        pid = _leftover_pid(entry.name, dest.name, "tmp")
        if pid is not None and pid != os.getpid() and not _pid_alive(pid):
            _remove(entry)
    return dest


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _umask_mode(base: int) -> int:
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def write_folder_atomically(dest: str | Path, fill: Callable[[Path], None]) -> Path:
    """Call ``fill(tmp_folder)`` on a fresh temp folder beside ``dest``, then rename it to ``dest``.

    An existing ``dest`` is replaced only after ``fill`` succeeded, so a crash never leaves a half-written
    artifact under the final name. The folder gets normal permissions (0o777 less the umask), not mkdtemp's 0o700.
    """
    dest = recover_folder(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{os.getpid()}-", dir=dest.parent))
    try:
        fill(tmp)
        tmp.chmod(_umask_mode(0o777))
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            dest.rename(old)
            tmp.rename(dest)
            _remove(old)
        else:
            tmp.rename(dest)
    except BaseException:
        _remove(tmp)
        raise
    return dest


def write_file_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then ``os.replace`` it over ``path``.

    ``tmp_path`` keeps ``path``'s suffix (``.png``, ``.safetensors``), so writers that pick a format from it work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    """``path.write_text(text)`` without a half-written file on a crash."""
    return write_file_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomically(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON (non-JSON values through ``str``), written atomically."""
    return write_text_atomically(path, json.dumps(data, indent=2, default=str))


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 16 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()
