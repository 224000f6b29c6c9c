"""Local files the CLI writes. A file is replaced only once its new content is complete, and a
local I/O error is one line naming the path (exit 2), never "cannot reach a service".

`bday users export keep.csv` against a database that cannot be read must leave keep.csv as it
was: the content goes to a temporary file beside the target, which is renamed over it only after
the last row is written and synced to disk. Devices and pipes (`/dev/full`, a FIFO) are written
in place, as there is nothing to rename over; stdout is a stream.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from stat import S_IMODE, S_ISREG
from typing import TextIO

from bday.cli.errors import LocalFileError


class NamedOutput:
    """A text file whose write errors name it: ENOSPC, EPIPE and friends as LocalFileError."""

    def __init__(self, handle: TextIO, shown: str):
        self.handle, self.shown = handle, shown

    def write(self, text: str) -> int:
        try:
            return self.handle.write(text)
        except OSError as exc:
            raise self.error(exc) from None

    def flush(self) -> None:
        try:
            self.handle.flush()
        except OSError as exc:
            raise self.error(exc) from None

    def error(self, exc: OSError) -> LocalFileError:
        return LocalFileError(self.shown, "cannot write", exc)


@contextmanager
def output(path: str) -> Iterator[NamedOutput]:
    """A text stream for PATH (`-`: stdout), complete or untouched when the block fails."""
    if path == "-":
        with _stdout() as handle:
            yield handle
        return
    target = Path(os.path.realpath(path))  # a symlink's target is replaced, not the link
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise LocalFileError(path, "cannot write", exc) from None
    if mode is not None and not S_ISREG(mode):  # a device or a FIFO: nothing to rename over
        with _in_place(path) as handle:
            yield handle
        return
    with _replacing(target, path, mode) as handle:
        yield handle


@contextmanager
def _stdout() -> Iterator[NamedOutput]:
    if sys.stdout is None:  # `>&-`: Python leaves sys.stdout None
        raise LocalFileError("stdout", "cannot write", OSError(errno.EBADF, "it is closed"))
    handle = NamedOutput(sys.stdout, "stdout")
    try:
        yield handle
        handle.flush()
    except LocalFileError:
        _quiet_stdout()
        raise


def _quiet_stdout() -> None:
    """After a failed write (a closed pipe), send what Python flushes at exit to /dev/null,
    so the one line on stderr is not followed by a second error at shutdown."""
    with suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


@contextmanager
def _in_place(path: str) -> Iterator[NamedOutput]:
    try:
        raw = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise LocalFileError(path, "cannot write", exc) from None
    handle = NamedOutput(raw, path)
    try:
        yield handle
        handle.flush()
    finally:
        with suppress(OSError):
            raw.close()


@contextmanager
def _replacing(target: Path, shown: str, mode: int | None) -> Iterator[NamedOutput]:
    try:
        fd, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
    except OSError as exc:
        raise LocalFileError(shown, "cannot write", exc) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as raw:
            handle = NamedOutput(raw, shown)
            yield handle
            handle.flush()
            _sync(raw, shown)
        os.chmod(temporary, S_IMODE(mode) if mode is not None else 0o666 & ~_umask())
        os.replace(temporary, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise


def _sync(raw: TextIO, shown: str) -> None:
    try:
        os.fsync(raw.fileno())
    except OSError as exc:
        raise LocalFileError(shown, "cannot write", exc) from None


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return mask
