"""
The run directory and the way out of every training script: --out made, locked and checked
(prepare_out), saved models written as one change (save_model_dir), the final summary, and
script(), the context every script's main runs in: errors in one line, Ctrl-C and SIGTERM with
how to resume, the process group ended on every way out. The rest of the machinery around a
script's loop: nanoirl/cli.py (flags, device), nanoirl/resume.py (checkpoints, --resume),
nanoirl/logger.py (metrics.jsonl, the NaN guard, metrics.png).

A run directory (--out) holds:
  config.json     the flags the run was started (or last resumed) with
  metrics.jsonl   one JSON object per step, {"step": s, "<metric>": value, ...}, the same names
                  in every script
  metrics.png     one small panel per metric, drawn from metrics.jsonl
  ckpt.pt         the last checkpoint: written to ckpt.pt.tmp, fsynced, then renamed over ckpt.pt,
                  so a run killed at any moment keeps its last good checkpoint; it holds the
                  sha256 of its own contents, checked on every load
One run at a time holds --out (an exclusive flock on the directory, for the whole process).
--resume checks everything before it writes anything (nanoirl/resume.py:check_resume).
"""
import contextlib
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
from pathlib import Path

try:
    import fcntl  # POSIX; elsewhere --out is not locked
except ImportError:
    fcntl = None

from nanoirl import dist
from nanoirl.checkpoint import save_model
from nanoirl.cli import RunError
from nanoirl.files import write_atomically
from nanoirl.logger import PLOT
from nanoirl.resume import CKPT, CONFIG, METRICS, check_resume, plain_config, truncate_metrics, write_error
from nanoirl.sources import DataError

# what a run writes in --out, and all that --force removes: the files (and the temp files of
# config.json and metrics.jsonl that a kill can leave: .config.json.<pid>.tmp), and the saved
# models of train_sft.py (policy/), train_airl.py (discriminator/) and train_mlirl.py (reward_model/)
RUN_FILES = (CKPT, CKPT + ".tmp", CONFIG, METRICS, "metrics.tmp", PLOT, "mlirl_fig2.png")
RUN_DIRS = ("policy", "discriminator", "reward_model")


def one_line_errors():
    """Make a DataError or RunError end the script with 'error: <message>' and exit status 1,
    and Ctrl-C (KeyboardInterrupt) or SIGTERM with one line naming the last checkpoint and how to
    resume, without a traceback; every other exception keeps its traceback."""
    default = sys.excepthook
    def hook(kind, error, tb):
        if issubclass(kind, (DataError, RunError)):
            print(f"error: {error}", file=sys.stderr)
        elif issubclass(kind, KeyboardInterrupt):
            print(f"error: {interrupted(*error.args)}", file=sys.stderr)
        else:
            default(kind, error, tb)
    sys.excepthook = hook


def interrupted(how="interrupted"):
    """What a Ctrl-C (or a SIGTERM, or a lost rank: how) leaves: nothing (before --out was
    prepared), or the last good checkpoint."""
    if not _locks:
        return f"{how}; nothing to resume (the run directory was not written yet)"
    out = next(iter(_locks))
    if not (out / CKPT).exists():
        return f"{how}; no checkpoint was written yet in {out}: start again (--force)"
    return f"{how}; the last good checkpoint is {out / CKPT}: continue with the same command and --resume"


def _terminated(signum, frame):
    raise KeyboardInterrupt("stopped by SIGTERM")  # the same way out as Ctrl-C: one line, then exit


@contextlib.contextmanager
def script():
    """Every script's entry, around main(): `with run.script(): main(parser.parse_args())`.
    Errors end in one line (one_line_errors), SIGTERM as Ctrl-C does, and under torchrun the
    process group is ended on every way out (normal end, error, Ctrl-C, SIGTERM: dist.close).
    A collective that fails because another rank died or hangs is one line too: that rank's
    own error (above, or in torchrun's summary) is the cause. Under torchrun a rank then leaves
    with os._exit, its error printed and its streams flushed: the interpreter's teardown of
    torch's threads could still abort a finished rank (SIGABRT, 'terminate called without an
    active exception') about once in 15 runs even after the process group was destroyed, and
    every file of the run is already written, closed or fsynced by then."""
    one_line_errors()
    signal.signal(signal.SIGTERM, _terminated)
    status = 0
    try:
        yield
    except BaseException as e:
        if dist.world() == 1:
            raise
        if isinstance(e, Exception) and dist.is_collective_failure(e):
            why = str(e).split("] ", 1)[-1].split(". ")[0]  # gloo: "[pair.cc:553] Connection closed by peer ..."
            e = RunError(interrupted(f"rank {dist.rank()} of {dist.world()}: a collective failed ({why}): "
                                     "another rank stopped or is stuck, and its own error is the cause"))
        sys.excepthook(type(e), e, e.__traceback__)  # printed here: os._exit below skips the hook
        status = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else \
            128 + signal.SIGINT if isinstance(e, KeyboardInterrupt) else 1
    finally:
        # done: a SIGTERM now (torchrun's, once another rank failed) would only interrupt the way out
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ranks = dist.world()
        dist.close()
        if ranks > 1:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)


# ---- the run directory ---------------------------------------------------------------------------
def prepare_out(args):
    """Make --out, lock it for this process and write config.json there. An --out that already
    holds files is refused unless --resume (its checkpoint, flags and metrics.jsonl are checked
    first: resume.check_resume) or --force (every run file and saved model is removed, others kept).
    Under torchrun rank 0 does it, and every rank stops with its error."""
    return dist.on_main(lambda: _prepare_out(args))


def _prepare_out(args):
    out = Path(args.out)
    try:
        is_file = not stat.S_ISDIR(os.stat(out).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        is_file = False  # made below, or refused there (a parent that is a file)
    except OSError as e:  # a name over 255 bytes, a path over 4096, a loop of links...
        raise RunError(f"--out {out}: {e.strerror}") from None
    if is_file:
        raise RunError(f"--out {out} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()  # can we write there?
    except OSError as e:
        raise RunError(f"--out {out} is not writable: {e.strerror}") from None
    lock(out)
    for name in RUN_FILES:  # a directory or a FIFO where a run file goes: reading it would fail or hang
        path = out / name
        if os.path.lexists(path) and not path.is_file():
            kind = "a directory" if path.is_dir() else "a FIFO (named pipe)" if path.is_fifo() else "not a regular file"
            raise RunError(f"{path} is {kind}, where the run keeps a file of its own; move it away")
    held = sorted(p.name for p in out.iterdir())
    if args.resume and not (out / CKPT).exists():
        raise RunError(f"--resume: there is no checkpoint {out / CKPT} to resume from")
    if held and not (args.resume or args.force):
        raise RunError(f"--out {out} already holds {', '.join(held[:3])}{', ...' * (len(held) > 3)}; "
                       "pass --resume to continue that run or --force to start over")
    if args.resume:  # the metrics the checkpoint does not cover are dropped before config.json
        truncate_metrics(out / METRICS, check_resume(out, args), out)  # changes: a failed write leaves both
    if args.force:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for tmp in [*out.glob(f".{CONFIG}.*.tmp"), *out.glob(f".{METRICS}.*.tmp")]:
            tmp.unlink()
        for name in RUN_DIRS + tuple(f".{d}.{x}" for d in RUN_DIRS for x in ("tmp", "old")):
            if (out / name).is_dir():
                shutil.rmtree(out / name)
    try:
        write_atomically(out / CONFIG, [json.dumps(plain_config(args), indent=2) + "\n"])
    except OSError as e:
        raise write_error(out / CONFIG, e, out) from None
    return out


def save_model_dir(model, directory, out, also=None):
    """save_model(model, directory) as one change: written (and also(tmp) called on rank 0,
    e.g. to add tokenizer.json) into .<name>.tmp beside it, which then replaces the directory, so
    that a full disk never leaves a policy/ of new config.json and old weights. Every rank calls it
    (FSDP2's shards are gathered); a failed write is write_error's one line on every rank."""
    directory = Path(directory)
    tmp, old = (directory.with_name(f".{directory.name}.{x}") for x in ("tmp", "old"))

    def swap():
        if also:
            also(tmp)
        if directory.exists():  # a directory cannot be renamed over a full one: old aside, new in
            os.rename(directory, old)
        os.rename(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    try:
        dist.on_main(lambda: [shutil.rmtree(p) for p in (tmp, old) if p.is_dir()])
        save_model(model, tmp)
        dist.on_main(swap)
    except OSError as e:
        dist.on_main(lambda: shutil.rmtree(tmp, ignore_errors=True))
        raise write_error(directory, e, out) from None


_locks = {}  # resolved --out -> the open directory this process holds the flock of


def lock(out):
    """Hold an exclusive flock on the directory --out until the process ends: a second run on the
    same --out is refused instead of mixing its files with this one's."""
    key = out.resolve()
    if fcntl is None or key in _locks:  # not POSIX, or already ours (several calls in one process)
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunError(f"--out {out} is in use by another run (it holds a lock on the directory); "
                       "wait for it to end or use another --out") from None
    _locks[key] = fd


def summary(out):
    """Print where everything of the run is."""
    if not dist.is_main():
        return
    kinds = {CONFIG: "config", METRICS: "metrics", ".png": "plot", ".pt": "checkpoint"}
    print(f"run directory {Path(out)}")
    for p in sorted(Path(out).iterdir()):
        if p.suffix != ".tmp":  # a directory is a saved model (policy/, reward_model/, ...)
            kind = "model" if p.is_dir() else kinds.get(p.name) or kinds.get(p.suffix, "file")
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
            print(f"  {kind:<10} {p}  ({size / 1e6:.2f} MB)")
