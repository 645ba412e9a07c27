"""The run folder: one trainer at a time (a lock), and a new run never mixes with an old one.

``RunLock`` holds an exclusive ``flock`` on ``output_dir/.lock`` for the whole run; the file
names the holder (PID, host, start time), so a second trainer on the same folder is refused with
a line that says who holds it. The kernel drops a ``flock`` when its process dies, so the lock of
a killed run is taken over (with a message naming the dead holder). Where the filesystem offers
no ``flock``, the PID is checked instead: a holder on this host that no longer exists is stale.

``claim_run_folder`` decides what a run may do with the folder's contents: continue them
(``trainer.resume=latest`` or a checkpoint inside the folder), replace them
(``trainer.overwrite=true`` deletes what an earlier run wrote: checkpoints, metrics, samples,
TensorBoard logs, the loss plot), or, for a new run in a non-empty folder, refuse.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
from pathlib import Path

__all__ = ["LOCK_FILE", "RUN_OUTPUTS", "RunFolderError", "RunLock", "claim_run_folder"]

LOCK_FILE = ".lock"
# What a trainer writes into its run folder (trainer.overwrite=true deletes these).
RUN_OUTPUTS = ("checkpoint-*", ".tmp-checkpoint-*", "metrics.jsonl", "loss.png", "samples",
               "tensorboard")


class RunFolderError(ValueError):
    """The run folder is in use or holds another run (one-line message)."""


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}")


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(fd, 4096).decode() or "{}")
    except (UnicodeDecodeError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder; ``acquire`` creates the folder, ``release`` unlocks.

    ``stale`` is the holder record of a dead process whose lock was taken over, else None.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.fd: int | None = None
        self.created = False
        self.stale: dict | None = None

    def acquire(self) -> RunLock:
        import fcntl

        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                self._refuse(holder)
            except OSError as error:
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                holder = _read_holder(fd)  # no flock here: judge the holder by its PID
                if holder and (holder.get("host") != socket.gethostname()
                               or _alive(holder.get("pid"))) and holder.get("pid") != os.getpid():
                    os.close(fd)
                    self._refuse(holder)
            try:  # the holder may have released (and deleted) the file since our open
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = _read_holder(fd)
        self.stale = holder or None
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record).encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def _refuse(self, holder: dict) -> None:
        raise RunFolderError(
            f"{self.folder} is in use by another trainer ({_describe(holder)}; lock file "
            f"{self.path}): wait for it to finish, stop it, or choose another trainer.output_dir")

    def release(self) -> None:
        """Unlock and delete the lock file; remove the folder if this lock created it empty."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # before unlocking, so nobody locks a dying file
        os.close(self.fd)
        self.fd = None
        if self.created and not any(self.folder.iterdir()):
            self.folder.rmdir()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _outputs(folder: Path) -> list[Path]:
    found = {path for pattern in RUN_OUTPUTS for path in folder.glob(pattern)}
    return sorted(found)


def claim_run_folder(
    folder: Path, resume: str | None, resume_from: Path | None, overwrite: bool
) -> list[str]:
    """Check that this run may use ``folder`` (locked by the caller); the notes to print.

    ``resume`` is the setting (None, "latest" or a path), ``resume_from`` the checkpoint it
    resolved to. Raises ``RunFolderError`` for a new run in a folder that already holds
    something, unless ``overwrite`` (which deletes the earlier run's outputs first).
    """
    contents = sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE)
    continuing = resume == "latest" or (
        resume_from is not None and resume_from.resolve().parent == folder.resolve())
    if not contents or continuing:
        return []
    if overwrite:
        removed = _outputs(folder)
        for path in removed:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        names = ", ".join(p.name for p in removed) or "nothing of a trainer"
        return [f"trainer.overwrite=true: deleted what the earlier run left in {folder}: {names}"]
    shown = ", ".join(contents[:4]) + (", ..." if len(contents) > 4 else "")
    raise RunFolderError(
        f"{folder} already holds another run ({shown}): continue it with trainer.resume=latest, "
        "start a fresh run with a new trainer.output_dir, or replace it with "
        "trainer.overwrite=true")
