"""Atomic file writes: a reader (or a resumed job) sees the old file or the new one, never half.

Every writer of results, caches, cards and checkpoints in the project goes through here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def atomic_write_atoms(path: str | os.PathLike, frames) -> Path:
    """Structures in the format ASE infers from the name, written to a temporary name and renamed:
    an interrupted write never leaves half a file (and a replaced input was read whole before)."""
    from ase.io import write
    from ase.io.formats import filetype

    path = Path(path)
    tmp = _tmp(path)
    try:
        write(str(tmp), frames, format=filetype(str(path), read=False))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_json(path: str | os.PathLike, data, indent: int | None = 2) -> Path:
    """JSON with numpy scalars and arrays converted; ends with a newline."""
    return atomic_write_text(path, json.dumps(data, indent=indent, default=_json_default) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save_tensors(path: str | os.PathLike, tensors: dict) -> Path:
    """safetensors file, with the permissions of any other file (safetensors itself creates 0600)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
    return path


def atomic_save_npz(path: str | os.PathLike, compressed: bool = True, **arrays) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    with open(tmp, "wb") as fh:
        (np.savez_compressed if compressed else np.savez)(fh, **arrays)
    os.replace(tmp, path)
    return path


def append_jsonl(path: str | os.PathLike, records) -> None:
    """Append whole lines in one write, flushed and fsynced: a kill loses at most the last record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, default=_json_default, sort_keys=True) + "\n" for r in records)
    if not text:
        return
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":  # a torn last line from a killed writer: keep ours on a line of its own
                text = "\n" + text
    with open(path, "a") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike) -> list:
    """All complete records; a torn last line (killed writer) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class JsonlStore:
    """An append-only JSON-lines file of records keyed by ``record["key"]``: the whole result
    cache of a benchmark in one file, readable while another process appends to it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._records: dict[str, dict] = {}
        self.reload()

    def reload(self) -> None:
        self._records = {r["key"]: r for r in read_jsonl(self.path) if "key" in r}

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def get(self, key: str):
        return self._records.get(key)

    def items(self):
        return self._records.items()

    def add(self, key: str, record: dict) -> dict:
        record = {"key": key, **record}
        append_jsonl(self.path, [record])
        self._records[key] = json.loads(json.dumps(record, default=_json_default))
        return self._records[key]


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> str:
    """Lay out, write and close a matplotlib figure; returns the path (for a list of plots)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return str(path)


class WriteFailed(OSError):
    """Writing an output failed for a reason outside the input (disk full, a file-size limit, I/O):
    what was written before stays valid, and ``--resume`` completes it once space is back."""


def write_failed(path, exc: BaseException) -> WriteFailed:
    import errno

    code = getattr(exc, "errno", None)
    text = str(exc)
    hint = {errno.ENOSPC: "disk full", errno.EFBIG: "file-size limit reached", errno.EDQUOT: "disk quota exceeded"}
    why = hint.get(code) or ("disk full, a file-size limit or an I/O error" if "disk" in text or "full" in text
                             else type(exc).__name__)
    failed = WriteFailed(f"cannot write {path}: {text} ({why}); the chunks written before are kept: "
                         "free space (or raise the limit) and rerun with --resume")
    failed.errno = code or errno.EIO
    return failed


class LockHeld(RuntimeError):
    """Another process holds the lock: a second writer is refused, never interleaved."""


class ExclusiveLock:
    """An advisory lock on ``<target>.writer.lock`` (ASE's database keeps ``<target>.lock`` for its
    own short transactions) held while one process writes ``target`` (an output
    file and its sidecar, or a training run folder). The lock dies with its process, so a kill
    never leaves a stale lock; the small ``.lock`` file stays and is reused. On systems without
    ``fcntl`` (Windows) the lock file is created exclusively instead and removed on release."""

    def __init__(self, target: str | os.PathLike, what: str = "it", inside: bool = False):
        self.path = Path(target) / ".lock" if inside else Path(str(target) + ".writer.lock")
        self.target, self.what = Path(target), what
        self._fh = None

    def acquire(self) -> "ExclusiveLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            try:
                self._fh = open(self.path, "x")
            except FileExistsError:
                raise LockHeld(f"{self.target}: another process is writing {self.what} (lock file {self.path}; "
                               "delete it if no such process runs)") from None
            return self
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            raise LockHeld(f"{self.target}: another process{f' (pid {holder})' if holder else ''} is writing "
                           f"{self.what}; wait for it or stop it (lock {self.path})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is None:
            return
        try:
            import fcntl  # noqa: F401
        except ImportError:  # pragma: no cover
            self._fh.close()
            self.path.unlink(missing_ok=True)
        else:
            self._fh.close()  # closing drops the flock
        self._fh = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
