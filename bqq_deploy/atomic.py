"""Atomic file and directory writes: readers see the old version or the whole new one, never
a half-written file. Temporaries are hidden siblings named after the writing process
(`.NAME.<pid>.*.tmp`), so the next writer of the same name removes those of dead processes:
a job killed with SIGKILL leaves nothing behind for long."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _prefix(name: str) -> str:
    return f".{name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(directory: Path, name: str | None = None) -> None:
    """Remove the temporaries (of `name`, or of every name) that processes which are no longer
    running left in directory."""
    pattern = re.compile(rf"^\.{re.escape(name) if name else '.+'}\.(\d+)\..*\.(tmp|old)$")
    for entry in directory.iterdir() if directory.is_dir() else ():
        match = pattern.match(entry.name)
        if match and not _alive(int(match.group(1))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, chunks: Iterable[bytes]) -> None:
    """Write chunks to path through a temporary file in the same directory, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 is not what users expect
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, data) -> None:
    """data as indented, key-sorted JSON (stable bytes for the same data)."""
    atomic_write_bytes(path, [(json.dumps(data, indent=2, sort_keys=True) + "\n").encode()])


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory next to target. When the block succeeds it takes
    target's place in one atomic exchange where the kernel offers one (Linux renameat2),
    else by two renames whose gap a later call repairs (an old target found moved aside and
    no target is put back); when the block raises, it is deleted and target is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _restore_moved_aside(target)
    remove_stale_temporaries(target.parent, target.name)
    staging = Path(tempfile.mkdtemp(prefix=_prefix(target.name), suffix=".tmp", dir=target.parent))
    try:
        yield staging
        _default_permissions(staging)
        if not target.exists():
            os.replace(staging, target)
        elif _exchange(staging, target):
            shutil.rmtree(staging, ignore_errors=True)  # now holds the old target
        else:
            trash = Path(tempfile.mkdtemp(prefix=_prefix(target.name), suffix=".old", dir=target.parent))
            os.replace(target, trash / target.name)
            os.replace(staging, target)
            shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def scratch_directory(target: str | os.PathLike) -> Iterator[Path]:
    """A hidden working directory next to target, named like this module's temporaries (so
    one that a killed process leaves is removed by the next writer of target); deleted when
    the block ends."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=_prefix(target.name), suffix=".tmp", dir=target.parent))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _restore_moved_aside(target: Path) -> None:
    """A writer killed between its two renames left target moved aside and no target: put it
    back."""
    if target.exists():
        return
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\..*\.old$")
    for entry in target.parent.iterdir() if target.parent.is_dir() else ():
        match = pattern.match(entry.name)
        if match and not _alive(int(match.group(1))) and (entry / target.name).exists():
            os.replace(entry / target.name, target)
            return


def _default_permissions(directory: Path) -> None:
    """mkdtemp / mkstemp create private (0700 / 0600) entries; give the tree the usual
    permissions under the process umask."""
    umask = _umask()
    for path in [directory, *directory.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
