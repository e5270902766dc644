"""One writer per output folder: an exclusive lock held while a command writes there.

Two runs writing one folder at once lose data silently (each rewrites the other's history, or
both compute the same cells and one is refused when it stores them). Every command that writes
results (``attack``, ``train``, ``reproduce``, ``sweep``, ``demo``, ``report``, ``recover``)
holds the folder's lock from before its first write until it exits; a second run finds it
held and refuses in one line naming the holder.

The lock is ``.gradguard.lock`` in the folder, locked with ``flock``: the kernel releases it
when its process ends, however it ends (``kill -9`` included), so a lock left by a dead run
never blocks the next one: the file stays, the lock on it does not. The file holds the
holder's pid and command, for the message. It is removed at a clean exit; a run that takes
the lock checks that the file it locked is still the one in the folder (another run may have
removed it in between) and tries again when it is not.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from types import TracebackType

from .errors import ConfigError

LOCK_NAME = ".gradguard.lock"


class FolderBusyError(ConfigError):
    """Another process holds the folder's lock."""


class FolderLock:
    """``with FolderLock(folder, "gradguard train"):`` holds ``folder`` for this process.

    ``wait=False`` (runs): a held lock is a :class:`FolderBusyError` at once. ``wait=True``
    (short writes such as a report rebuilt from the store): wait for the holder to finish,
    so that both results are kept, one after the other.
    """

    def __init__(self, folder: str | Path, command: str, *, wait: bool = False, option: str = "--out"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command, self.wait, self.option = command, wait, option
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        """Create the folder if needed and take its lock (see the class docstring)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{self.option} {self.folder}: cannot create the folder "
                              f"({exc.strerror or exc})") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise ConfigError(f"{self.option} {self.folder}: cannot write there ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise FolderBusyError(
                    f"{self.option} {self.folder}: another gradguard run is writing there ({holder}); wait for "
                    f"it to finish or choose another folder") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed the file while we waited for it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "command": self.command, "since": time.time()}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (removing first: a run that opened the old file
        meanwhile sees it is gone and locks a new one)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _holder(fd: int) -> str:
    """"pid 123, `gradguard train`, since 14:02:11" from the lock file, as far as it reads."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%H:%M:%S", time.localtime(float(info["since"])))
        return f"pid {int(info['pid'])}, `{info['command']}`, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its lock file does not say which"
