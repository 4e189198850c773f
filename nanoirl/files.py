"""
Files written whole: the bytes go to a temp file beside the target, are fsynced, and the temp
file is renamed over the target, so that a reader (or a rerun) finds the old file or the new one,
never a cut one. config.json and metrics.jsonl of a run (nanoirl/run.py, nanoirl/resume.py),
data files (nanoirl/data.py, nanoirl/generate.py) and saved models (nanoirl/checkpoint.py) are
written so. No torch here.
"""
import errno
import os
from pathlib import Path


def write_atomically(path, chunks, mode="w"):
    """Write `chunks` (strings, as UTF-8, or bytes-like objects; streamed: a generator is never
    held whole) to a temp file beside `path`, then rename it onto path: path is never left
    partial, and a full disk, an I/O error or Ctrl-C leaves it as it was, the temp file removed
    and the error raised. mode "x" refuses an existing path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same directory: the rename is atomic
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the file
        if mode == "x" and path.exists():
            raise FileExistsError(errno.EEXIST, "File exists", str(path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def why_not_written(error):
    """An OSError as a message ends: a full disk worded as docs/operations.md words it for checkpoints."""
    return "no space left on the device" if error.errno == errno.ENOSPC else error.strerror or str(error)
