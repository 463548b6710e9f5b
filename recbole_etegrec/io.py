"""Crash-safe file writes: every checkpoint, cache, table and plot goes through ``atomic_write``.

The data is written to ``.<name>.tmp-<pid>`` in the target's own folder (same file system, so the
rename is atomic), flushed and fsynced, then ``os.replace``d over the final name: a kill at any
moment leaves either the old file or the new one, never a truncated one. Temporary files of a
killed writer are removed by ``remove_stale_tmp`` on the next run.
"""
import glob
import os
from contextlib import contextmanager
from typing import IO, Iterator, List

from recbole_etegrec.errors import EtegrecError

TMP_TAG = ".tmp-"


def tmp_name(path) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}{TMP_TAG}{os.getpid()}")


@contextmanager
def atomic_path(path) -> Iterator[str]:
    """For writers that want a file name (``savefig``, ``torch.save``): yields the temporary path."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = tmp_name(path)
    ext = os.path.splitext(path)[1]
    tmp = tmp + ext  # some writers (matplotlib) pick the format from the extension
    try:
        os.makedirs(folder, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _discard(tmp)
        raise EtegrecError(f"cannot write '{path}' ({err.strerror or err}): make '{folder}' writable "
                           "or choose another folder") from None
    except BaseException:
        _discard(tmp)
        raise


@contextmanager
def atomic_write(path, mode="wb", **open_kwargs) -> Iterator[IO]:
    """``with atomic_write(p, "w") as f: f.write(...)``; ``p`` appears only once complete."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()


def atomic_torch_save(obj, path, **kwargs) -> None:
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f, **kwargs)


def _discard(tmp):
    try:
        os.remove(tmp)
    except OSError:
        pass


def remove_stale_tmp(folder) -> List[str]:
    """Delete temporary files left in ``folder`` by writers that were killed (pid no longer alive)."""
    removed = []
    for tmp in glob.glob(os.path.join(glob.escape(folder), f".*{TMP_TAG}*")):
        pid = tmp.rsplit(TMP_TAG, 1)[1].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            _discard(tmp)
            removed.append(tmp)
    return removed


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_run_id() -> str:
    """Six hex digits naming one run's files (checkpoints, log) beside RecBole's one-second time
    stamp; from the OS, so the seeded random streams are untouched."""
    return os.urandom(3).hex()


def check_file_writable(path, key) -> None:
    """A file the run will replace: its folder must be writable and an existing file must not be
    read-only (a read-only file says "keep this"; the rename would replace it anyway)."""
    check_writable(os.path.dirname(os.path.abspath(path)), key)
    # the mode bits too: root may write anything, but a file without write bits was meant to stay
    if os.path.exists(path) and (not os.access(path, os.W_OK) or not os.stat(path).st_mode & 0o222):
        raise EtegrecError(f"{key} '{path}' is read-only and this run would replace it: copy it to a "
                           f"writable file and give that, or pass --checkpoint_dir=ANOTHER_FOLDER")


def check_writable(folder, key, fix=None) -> None:
    """Fail before training when an output folder cannot be created or written."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = tmp_name(os.path.join(folder, "write-probe"))
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as err:
        raise EtegrecError(f"{key} '{folder}' is not writable ({err.strerror or err}): "
                           f"{fix or f'fix its permissions or pass --{key}=ANOTHER_FOLDER'}") from None
