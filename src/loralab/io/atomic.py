"""Atomic writes: a reader (or a process killed half-way) never sees half a file or directory.

Each writer goes through a temporary name in the target's own directory, then `os.replace`
renames it into place; on any failure the temporary is removed and the target is untouched. A
temporary left by a killed process (its name holds the writer's pid) is removed by the next write
next to it. Files get the modes any other tool would give them: 0666 and 0777 less the umask
(temporary files are created 0600, which would otherwise stick).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:
    import torch


def umask() -> int:
    """The process's umask (read without changing it where /proc tells, else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_prefix(path: Path) -> str:
    """``.<name>.<pid>.``: the writer's pid in the name, so a leftover can be told from a live write."""
    return f".{path.name}.{os.getpid()}."


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` whose writing process no longer exists (killed mid-write)."""
    for leftover in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        parts = leftover.name[len(path.name) + 2:].split(".", 1)
        if not parts[0].isdigit() or int(parts[0]) == os.getpid() or pid_alive(int(parts[0])):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                leftover.unlink()


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, then rename ``tmp_path`` to ``path`` (mode 0666 less the umask)."""
    path = Path(path)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path), suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically, flushed to disk before the rename."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def atomic_save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata=None) -> Path:
    """Write a safetensors file atomically (tensors detached and made contiguous)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    def write(tmp: str) -> None:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as err:  # its I/O errors, as the OSError they are (a full disk: ENOSPC)
            full = "StorageFull" in str(err) or "No space" in str(err)
            raise OSError(errno.ENOSPC if full else errno.EIO, f"{'no space left' if full else err}", str(path)) from None

    return atomic_write(path, write)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``path``; on success it replaces ``path``.

    ``path`` must not exist or be an empty directory. On failure the temporary directory is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=temporary_prefix(path), suffix=".tmp"))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~umask())
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def readable_json(path: str | os.PathLike):
    """A JSON file's content, or None when it is missing or not readable JSON (e.g. cut short by a full disk)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def check_new_directory(path: str | os.PathLike, flag: str = "--out") -> Path:
    """A directory about to be written as a whole: new, or empty; not a file, not a symbolic link (a link is
    refused rather than followed: what it points to is not what the user named), in a place one can write."""
    from loralab.errors import ConfigError

    path = Path(path)
    if path.is_symlink():
        target = os.readlink(path)
        raise ConfigError(f"{flag} {path} is a symbolic link (to {target}){'' if path.exists() else ', which does not exist'}; "
                          "give the real directory, or a new one.")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file; give a new directory.")
    if path.is_dir() and any(path.iterdir()):
        raise ConfigError(f"{flag} {path} is not empty; give a new directory (nothing was written).")
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot write in {parent} (read-only, or not yours); choose another place.")
    return path
