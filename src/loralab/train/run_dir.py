"""The run directory rules: a run is never overwritten, mixed with another or resumed under a different config.

* a new run needs ``--out`` to be new or empty; ``--overwrite`` clears it once the new run's data, model
  and config have loaded without error (a refused run leaves the old one untouched);
* ``--resume`` needs a checkpoint in ``--out`` and a config that matches the one the run started
  with in everything that changes the result (`TrainConfig.differences`);
* a run that fails before writing any checkpoint leaves no directory behind (`discard_if_empty`);
* one process at a time writes a run: `create_out` takes an exclusive lock on ``<out>/.lock`` (``flock``,
  which the kernel releases when the process dies, so a killed run's leftover file locks nothing; a
  finished or failed run removes it) and checks ``--out`` again under it; a second ``loralab train`` on
  the same ``--out`` — a second ``--resume``, or an ``--overwrite`` that would delete a live run — is
  refused, naming the process that holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import IO, Optional

from loralab.errors import ConfigError
from loralab.rundir import CONFIG_FILE, LOCK_FILE, RunDir
from loralab.train.checkpoint import has_checkpoint
from loralab.train.config import TrainConfig, flag_of


def check_out(cfg: TrainConfig, locked: bool = False) -> Path:
    """Check ``cfg.out`` against the rules above without changing anything; return it as a Path.
    ``locked``: this process holds the run's lock (so it is not asked who does)."""
    out = Path(cfg.out)
    if out.is_symlink() and not out.exists():
        raise ConfigError(f"--out {cfg.out} is a symbolic link to {os.readlink(out)}, which does not exist; make that "
                          "directory, or give a real --out.")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {cfg.out} is a file; give a directory for the run (it is created if missing).")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise ConfigError(f"--out {cfg.out}: {parent} is a file, so the run directory cannot be made there.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {cfg.out}: cannot write in {parent}; choose a directory you can write to.")
    holder = lock_holder(out) if out.is_dir() and not locked else None
    if holder:
        raise busy(out, holder)
    run = RunDir(out)
    never_checkpointed = run.is_run() and not has_checkpoint(run.checkpoint) and not run.finished()
    if cfg.resume and not never_checkpointed:
        check_resume(cfg, out)
    elif out.is_dir() and held_files(out) and cfg.overwrite and not (run.is_run() or has_checkpoint(run.checkpoint)):
        held = held_files(out)[:6]
        raise ConfigError(f"--out {cfg.out} holds files that are not a loralab run ({held}); --overwrite only ever "
                          "deletes a run directory. Give a new --out (nothing was deleted).")
    elif out.is_dir() and held_files(out) and not cfg.overwrite and not never_checkpointed:
        held = held_files(out)[:6]
        raise ConfigError(f"--out {cfg.out} is not empty (it holds {held}); give a new --out, add --resume to "
                          "continue the run there, or --overwrite to delete it and start again.")
    return out


def check_resume(cfg: TrainConfig, out: Path) -> None:
    if not has_checkpoint(RunDir(out).checkpoint):
        raise ConfigError(f"--resume: {out} has no checkpoint to resume from (is --out spelled right?). "
                          "To start a new run there, drop --resume.")
    saved_path = out / CONFIG_FILE
    if not saved_path.exists():
        raise ConfigError(f"--resume: {out} has a checkpoint but no {CONFIG_FILE}; it was not written by "
                          "`loralab train`. Start a new run with a new --out.")
    saved = TrainConfig.from_dict(json.loads(saved_path.read_text()))
    differences = saved.differences(cfg)
    if differences:
        listed = "; ".join(f"{flag_of(k)} was {a!r}, now {b!r}" for k, (a, b) in differences.items())
        raise ConfigError(f"--resume: the run in {out} was started with a different config ({listed}). Resume with "
                          "the original values, or start a new run with a new --out.")


def held_files(out: Path) -> list[str]:
    """What a run directory holds, the lock file aside."""
    return sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)


def create_out(cfg: TrainConfig, out: Path) -> tuple[bool, Optional[IO]]:
    """Lock ``out`` for this process and make it ready (clearing it for --overwrite): (True when this call
    created the directory, the held lock — pass it to `release`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:  # one process creates the directory; another that finds it made must not remove it on failing the lock
        out.mkdir()
        created = True
    except FileExistsError:
        created = False
    try:
        handle = lock(out)
    except BaseException:
        if created:  # only if still empty: the process holding the lock may already be writing in it
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    try:
        check_out(cfg, locked=True)  # again, under the lock: another process may have changed --out meanwhile
    except BaseException:
        release(handle)
        raise
    run = RunDir(out)
    if cfg.overwrite or (run.is_run() and not has_checkpoint(run.checkpoint) and not run.finished()):
        clear(out)  # --overwrite, or a run killed before its first checkpoint (nothing of it to keep)
        created = True
    return created, handle


def clear(out: Path) -> None:
    """Delete what ``out`` holds except the lock; a symbolic link is removed, never followed."""
    for name in held_files(out):
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def lock(out: Path) -> Optional[IO]:
    """An exclusive ``flock`` on ``out/.lock`` holding this process's id, or an error naming the holder.
    None where ``fcntl`` does not exist (Windows): no lock there."""
    try:
        import fcntl
    except ImportError:
        return None
    attempts = 0
    while True:
        handle = open(out / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            attempts += 1
            if attempts >= 10:  # a writer holds it for the whole run; `lock_holder`'s probe only for an instant
                raise busy(out, holder or "another process") from None
            time.sleep(0.05)
            continue
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(out / LOCK_FILE).st_ino:
                break  # the file is still the lock (its holder removes it when it lets go)
        except FileNotFoundError:
            pass
        handle.close()
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return handle


def busy(out: Path, holder: str) -> ConfigError:
    return ConfigError(f"--out {out} is being written by another `loralab train` ({holder}); wait for it to finish "
                       "or stop it, or give another --out.")


def lock_holder(out: Path) -> Optional[str]:
    """Who is writing the run in ``out`` now ("pid N on host, since …"), or None when nobody is."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        handle = open(out / LOCK_FILE)
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return handle.read().strip() or "another process"
    return None


def release(handle: Optional[IO]) -> None:
    """Let go of `lock`: remove the lock file (a process that opened it meanwhile sees it is gone and
    opens the new one), then close it, which releases the flock."""
    if handle is None:
        return
    try:
        if os.fstat(handle.fileno()).st_ino == os.stat(handle.name).st_ino:
            os.unlink(handle.name)
    except FileNotFoundError:
        pass  # discard_if_empty removed the whole run directory
    handle.close()


def discard_if_empty(out: Path, created: bool) -> None:
    """Remove a run directory this process created when no checkpoint or result made it in."""
    run = RunDir(out)
    if created and out.is_dir() and not has_checkpoint(run.checkpoint) and not run.finished():
        shutil.rmtree(out, ignore_errors=True)
