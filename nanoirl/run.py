"""
What every training script does around its loop: the common flags, the run directory, atomic
checkpoints that resume exactly, the metrics log and its plot, the NaN guard, the final summary.

A run directory (--out) holds:
  config.json     the flags the run was started (or last resumed) with
  metrics.jsonl   one JSON object per step, {"step": s, "<metric>": value, ...}, the same names
                  in every script
  metrics.png     one small panel per metric, drawn from metrics.jsonl
  ckpt.pt         the last checkpoint: written to ckpt.pt.tmp, fsynced, then renamed over ckpt.pt,
                  so a run killed at any moment keeps its last good checkpoint; it holds the
                  sha256 of its own contents, checked on every load
One run at a time holds --out (an exclusive flock on the directory, for the whole process).
--resume checks everything before it writes anything: the checkpoint's checksum, the flags against
the checkpoint's (only RESUME_MAY_CHANGE may differ) and metrics.jsonl against the checkpoint.
Step convention: the loop runs `for step in range(start, steps)`, logs metrics under `step`,
and a checkpoint written after it stores step + 1, the number of steps done = where to resume.
"""
import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import stat
import sys
import tempfile
import time
from pathlib import Path

try:
    import fcntl  # POSIX; elsewhere --out is not locked
except ImportError:
    fcntl = None

import numpy as np
import torch

from nanoirl import dist
from nanoirl.checkpoint import save_model
from nanoirl.data import DataError, why_not_written

CKPT, CONFIG, METRICS, PLOT = "ckpt.pt", "config.json", "metrics.jsonl", "metrics.png"
# what a run writes in --out, and all that --force removes: the files, and the saved models of
# train_sft.py (policy/), train_airl.py (discriminator/) and train_mlirl.py (reward_model/)
RUN_FILES = (CKPT, CKPT + ".tmp", CONFIG, METRICS, "metrics.tmp", PLOT, "mlirl_fig2.png",
             f".{CONFIG}.tmp", f".{METRICS}.tmp")  # the last two: write_file's temp files
RUN_DIRS = ("policy", "discriminator", "reward_model")
# flags that may differ on --resume: where and how fast the run computes, not what it computes
# (micro-batches sum the same gradients; --grad-checkpoint recomputes the same activations; the
# number of ranks and --fsdp split the same computation: a checkpoint resumes with any of them)
RESUME_MAY_CHANGE = ("resume", "force", "out", "device", "log_every", "ckpt_every", "micro_batch_size",
                     "grad_checkpoint", "fsdp")

MODEL_FORMS = ("toy-tabular, toy-gpt, pythia-{70m,160m,410m,1b,1.4b,2.8b,6.9b,12b}[-deduped], a Hub id "
               "owner/name, random:pythia-<size> (random init, for dry runs), "
               "or an existing local checkpoint path")


class RunError(RuntimeError):
    """A problem with a flag, the run directory or the training itself; its message is one line."""


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


# ---- the flags every script shares ---------------------------------------------------------------
def model_arg(value):
    """argparse type of --model: the toy, a random config, an existing path, or a name that
    nanoirl.hub can look up (a Pythia name or a Hub id); whether it is cached is checked later."""
    from nanoirl.hub import PYTHIA, repo_id
    if value in ("toy-tabular", "toy-gpt") or os.path.exists(value):
        return value
    if value.startswith("random:") and value[len("random:"):] in PYTHIA:
        return value
    try:
        return repo_id(value) and value  # raises ValueError for anything else, random:<unknown> too
    except ValueError:
        raise argparse.ArgumentTypeError(f"unknown model {value!r}; use {MODEL_FORMS}") from None


def file_arg(value):
    """An existing regular file (a directory or a FIFO is named as what it is)."""
    try:
        mode = os.stat(value).st_mode
    except FileNotFoundError:
        raise argparse.ArgumentTypeError(f"no such file: {value}") from None
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {value}: {e.strerror}") from None
    if stat.S_ISDIR(mode):
        raise argparse.ArgumentTypeError(f"{value} is a directory, not a JSONL file")
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "not a regular file"
        raise argparse.ArgumentTypeError(f"{value} is {kind}; give a regular file (it is read once per run "
                                         "and again on --resume)")
    return value


def data_arg(value):
    """argparse type of --data: an existing file (regular, not a FIFO) or directory (":split"
    allowed after a dataset directory), or what looks like a Hub dataset owner/name[:split]
    (looked up later)."""
    name = value.split(":")[0] if not os.path.exists(value) else value
    if os.path.isdir(name) or re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", name) and not os.path.exists(name):
        return value
    return file_arg(name) and value


# The types of numeric flags: each checks its range at parse time, so that argparse prints
# 'error: argument --flag: ...' and exits before anything is written.
def _number(value, kind):
    try:
        return kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {value!r}") from None


def positive_int(value):
    n = _number(value, int)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def nonnegative_int(value):
    n = _number(value, int)
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return n


def seed_arg(value):
    n = _number(value, int)
    if not 0 <= n < 2 ** 32:  # numpy's seeds
        raise argparse.ArgumentTypeError(f"expected a seed in 0 ... 2**32 - 1, got {value!r}")
    return n


def positive_float(value):
    x = _number(value, float)
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value!r}")
    return x


def nonnegative_float(value):
    x = _number(value, float)
    if not (math.isfinite(x) and x >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value!r}")
    return x


def learning_rate(value):
    """> 0; inf is allowed: every weight becomes non-finite after one step, and the NaN guard
    stops the run with one line (how the tests reach that guard)."""
    x = _number(value, float)
    if not x > 0:  # nan compares false
        raise argparse.ArgumentTypeError(f"expected a learning rate > 0, got {value!r}")
    return x


def check_minibatches(num_minibatches, rollout_batch_size):
    """PPO cuts each rollout into --num-minibatches equal minibatches: checked once the per-model
    defaults are filled in, before --out is touched."""
    if rollout_batch_size % num_minibatches:
        raise RunError(f"--num-minibatches {num_minibatches} must divide --rollout-batch-size "
                       f"{rollout_batch_size} (PPO cuts each rollout into equal minibatches)")


def int_list(check, multiple_of=1):
    """argparse type of a comma-separated list of integers, each passed through `check` (e.g.
    positive_int) and a multiple of `multiple_of`."""
    def parse(value):
        items = [check(v.strip()) for v in value.split(",")]
        if any(n % multiple_of for n in items):
            raise argparse.ArgumentTypeError(f"expected multiples of {multiple_of}, got {value!r}")
        return items
    return parse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The script's docstring as written, and '(default: X)' after every flag whose help does not
    already say its default (a default of None is picked per model: the help says how)."""
    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def add_common_args(parser, **defaults):
    """Add the flags of all three scripts, in groups; keyword arguments override their defaults
    (e.g. out="out/sft"). Each script adds its algorithm's flags in groups of its own."""
    g = parser.add_argument_group("model and data")
    g.add_argument("--model", type=model_arg, default="toy-tabular", help=f"the policy: {MODEL_FORMS}")
    g.add_argument("--data", type=data_arg, default=None,
                   help='demonstrations: {"prompt", "response"} or the TL;DR layout {"subreddit", "title", '
                        '"post", "summary"}, as a JSONL, parquet or dataset directory, or a Hub dataset '
                        "owner/name[:split]; default: the toy MDP's expert, on text TL;DR "
                        "(vwxyzjn/summarize_from_feedback_tldr_3_filtered)")
    g.add_argument("--max-prompt-len", type=positive_int, default=512,
                   help="prompts are left-padded to this many tokens; a longer one is an error (TL;DR: 512)")
    g.add_argument("--max-response-len", type=positive_int, default=53,
                   help="responses, EOS included, are right-padded or truncated to this many tokens (TL;DR: 53)")
    g = parser.add_argument_group("run directory")
    g.add_argument("--out", default="out", help="run directory: config.json, metrics.jsonl, metrics.png, ckpt.pt")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--resume", action="store_true", help="continue the run in --out from its ckpt.pt")
    x.add_argument("--force", action="store_true",
                   help="start over in an --out that already holds files (replaces its run files)")
    g.add_argument("--ckpt-every", type=positive_int, default=100,
                   help="write the checkpoint every this many steps, and at the end")
    g.add_argument("--log-every", type=positive_int, default=1,
                   help="print a line every this many steps (metrics.jsonl gets every step)")
    g = parser.add_argument_group("system")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto: cuda when available")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float64", "bfloat16"],
                   help="compute dtype; auto: bfloat16 on CUDA, float32 on CPU")
    g.add_argument("--seed", type=seed_arg, default=1, help="seed of every random number generator")
    g.add_argument("--micro-batch-size", type=positive_int, default=None,
                   help="sequences (reward model: pairs) per forward/backward of every training step; "
                        "gradients accumulate to the whole batch's (default: whole batches on the toy, 8 on text)")
    g.add_argument("--grad-checkpoint", action="store_true",
                   help="GPT models recompute each layer's activations in backward: less memory, the "
                        "same numbers, about a third more compute (pythia-1b PPO within 40 GB)")
    g.add_argument("--forward-batch-size", type=positive_int, default=64,
                   help="sequences per no-grad chunk of sampling and scoring (rollouts, ML-IRL's pairs), global: "
                        "under torchrun each rank takes its share of every chunk, so give 64 x ranks to "
                        "sample 64 per GPU; one process with the same value samples the same responses")
    g.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the trained models (and the frozen reference) over the ranks "
                        "with FSDP2, per transformer layer, instead of replicating them with DDP (README: "
                        "past one GPU)")
    parser.set_defaults(**defaults)


def device_and_dtype(args):
    """(torch.device, torch.dtype) from --device and --dtype. Under torchrun it also starts the
    process group (nanoirl/dist.py), and each rank takes the GPU of its local rank."""
    name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RunError(f"--device {name}: not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):  # mps, meta, xpu...: not what nanoirl runs and tests on
        raise RunError(f"--device {name}: not supported; use cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise RunError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices")
    if getattr(args, "fsdp", False) and "RANK" not in os.environ:
        raise RunError("--fsdp shards the models over the ranks of torchrun: launch with "
                       "torchrun --nproc_per_node N (README: past one GPU)")
    if getattr(args, "fsdp", False) and not dist.has_fsdp2():
        raise RunError(f"--fsdp needs torch >= {dist.FSDP2_TORCH} (FSDP2); this is torch {torch.__version__}")
    try:
        local = dist.init(device.type)
    except ValueError as e:  # a bad NANOIRL_DIST_TIMEOUT
        raise RunError(str(e)) from None
    if device.type == "cuda" and dist.world() > 1:
        device = torch.device("cuda", local)
    dtype = args.dtype if args.dtype != "auto" else "bfloat16" if device.type == "cuda" else "float32"
    return device, getattr(torch, dtype)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # CPU and every CUDA device


# ---- the run directory ---------------------------------------------------------------------------
def plain_config(args):
    return json.loads(json.dumps(vars(args), default=str))  # only JSON values: loads weights_only


def prepare_out(args):
    """Make --out, lock it for this process and write config.json there. An --out that already
    holds files is refused unless --resume (its checkpoint, flags and metrics.jsonl are checked
    first: see check_resume) or --force (every run file and saved model is removed, others kept).
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
        for name in RUN_DIRS + tuple(f".{d}.{x}" for d in RUN_DIRS for x in ("tmp", "old")):
            if (out / name).is_dir():
                shutil.rmtree(out / name)
    write_file(out / CONFIG, (json.dumps(plain_config(args), indent=2) + "\n").encode(), out)
    return out


def write_error(path, error, out):
    """The one line of a failed write (an OSError: a full disk, a quota, an I/O error), worded as
    the checkpoint's: 'cannot write <path>: no space left on the device; the last good checkpoint is ...'."""
    return RunError(f"cannot write {path}: {why_not_written(error)}; {last_good(out)}")


def write_file(path, data, out):
    """Write bytes to path through a temp file beside it and a rename: path is always either the
    old file or the new one, never a cut one; a failed write is write_error's one line."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e, out) from None
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()


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


def check_resume(out, args):
    """Refuse a --resume that would not continue the run in out, before anything is written: the
    checkpoint must load and match its checksum, the flags must equal the checkpoint's (except
    RESUME_MAY_CHANGE), and metrics.jsonl must hold every step the checkpoint covers."""
    ckpt = read_checkpoint(out)
    old, new = ckpt["config"], plain_config(args)
    if "data_sha256" in old and old["data_sha256"] != new.get("data_sha256"):  # (older checkpoints have none)
        raise RunError(f"--resume: the contents of --data {new.get('data')}{' or --eval-pairs' * bool(new.get('eval_pairs'))} "
                       f"changed since the checkpoint (fingerprint {old['data_sha256']} -> {new.get('data_sha256')}); "
                       "resume with the run's data, or start a new run with another --out or --force")
    changed = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k) and k not in RESUME_MAY_CHANGE
               and k != "data_sha256"]
    if changed:
        flags = ", ".join(f"--{k.replace('_', '-')} {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise RunError(f"--resume: flags differ from the checkpoint's run ({flags}); resume with its flags "
                       f"(see {out / CONFIG}), or start a new run with another --out or --force")
    check_metrics(out / METRICS, ckpt["step"])
    return ckpt["step"]


def check_metrics(path, start):
    """metrics.jsonl of a run to resume must hold steps 0 ... start - 1 in order (after them a line
    cut by a kill, or steps the checkpoint does not cover, which the Logger drops)."""
    if start == 0:
        return
    if not path.exists():
        raise RunError(f"--resume: {path} is missing, and the checkpoint covers {start} steps: their "
                       "history would be lost; restore the file, or start over with --force")
    steps = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        try:
            step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            step = None
        if len(steps) < start:
            if step != len(steps):
                raise RunError(f"--resume: {path}:{n} is not the line of step {len(steps)} (damaged?), and "
                               f"the checkpoint covers {start} steps; restore the file, or start over with --force")
            steps.append(step)
    if len(steps) < start:
        raise RunError(f"--resume: {path} holds {len(steps)} steps, the checkpoint covers {start}; "
                       "restore the file, or start over with --force")


# ---- checkpoints ---------------------------------------------------------------------------------
def rng_states():
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(rng):
    random.setstate(rng["python"])
    name, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(rng["torch"])
    for i, s in enumerate(rng["cuda"][:torch.cuda.device_count()] if torch.cuda.is_available() else []):
        torch.cuda.set_rng_state(s, i)


def save_checkpoint(out, step, state, args, **extra):
    """Write the one checkpoint dict to out/ckpt.pt atomically and return its path.
    state: name -> anything with state_dict() (models, optimizers, LR schedulers) or a
    torch.Generator; extra: more tensors or plain values to keep (e.g. MLIRL's pairs).
    A model holding a NaN or inf weight is refused (an update can overflow after a finite loss):
    ckpt.pt stays the last good checkpoint."""
    # whole tensors, on rank 0 only: FSDP2's shards are gathered one tensor at a time, to its CPU
    states = {k: v.get_state() if isinstance(v, torch.Generator) else dist.state_dict(v, to_main=True)
              for k, v in state.items()}

    def write():  # on rank 0; its error is raised on every rank
        for name, v in state.items():
            if isinstance(v, torch.nn.Module) or isinstance(dist.unwrap(v), torch.nn.Module):
                if not all(t.isfinite().all() for t in states[name].values() if t.is_floating_point()):
                    raise RunError(f"{name} has non-finite weights after step {step - 1}; {last_good(out)}")
        return _write_checkpoint(out, step, states, args, extra)
    return dist.on_main(write)


def _write_checkpoint(out, step, states, args, extra):
    ckpt = {"step": step, "config": plain_config(args), "rng": rng_states(), **extra, "state": states}
    ckpt["sha256"] = checksum(ckpt)
    path, tmp = Path(out) / CKPT, Path(out) / (CKPT + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the checkpoint
    except (OSError, RuntimeError) as e:  # a full disk, a quota, an I/O error (torch may wrap them)
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            why = why_not_written(e)
        else:  # torch reports some failed writes itself: "[enforce fail ...] unexpected pos ..."
            why = f"torch.save failed ({(str(e).splitlines() or [type(e).__name__])[0]})"
        raise RunError(f"cannot write the checkpoint of step {step - 1} to {tmp}: {why}; {last_good(out)}") from None
    os.replace(tmp, path)     # atomic: ckpt.pt is always either the old or the new checkpoint
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)
    return path


def restore(ckpt, state, out):
    """Load each object of `state` from the checkpoint dict `ckpt` (read from out/ckpt.pt)."""
    missing = sorted(state.keys() - ckpt["state"].keys())
    if missing:
        raise RunError(f"{Path(out) / CKPT} has no state for {', '.join(missing)} (written by another script?)")
    for k, v in state.items():
        if isinstance(v, torch.Generator):
            v.set_state(ckpt["state"][k])
        else:
            dist.load_state_dict(v, ckpt["state"][k])  # whole tensors, sharded again under FSDP2


def checksum(obj, h=None):
    """sha256 of a checkpoint's contents: every tensor's dtype, shape and bytes and the repr of
    every other value, in order. Stored in the checkpoint, it is recomputed on load: a flipped
    byte in a tensor changes it (torch.load itself checks no checksum)."""
    top = h is None
    h = h or hashlib.sha256()
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"tensor {t.dtype} {list(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if not (top and k == "sha256"):
                h.update(f"key {k!r}".encode())
                checksum(v, h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__} {len(obj)}".encode())
        for v in obj:
            checksum(v, h)
    else:
        h.update(repr(obj).encode())
    return h.hexdigest() if top else None


def read_checkpoint(out):
    """The checkpoint dict of out/ckpt.pt, its checksum verified; a file that is empty, cut short,
    damaged or not a checkpoint is a one-line RunError naming it."""
    path = Path(out) / CKPT
    try:
        size = path.stat().st_size
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=size > 0)
    except FileNotFoundError:
        raise RunError(f"{path}: no such checkpoint") from None
    except Exception:  # torch's message may advise weights_only=False: unsafe, so it is not shown
        what = "it is empty (0 bytes)" if size == 0 else f"it is damaged or not a checkpoint ({size} bytes)"
        raise RunError(f"{path}: cannot load the checkpoint: {what}; start over with --force") from None
    if not isinstance(ckpt, dict) or not {"step", "config", "state", "rng"} <= ckpt.keys():
        raise RunError(f"{path} is not a nanoirl checkpoint (no step, config, state and rng)")
    if "sha256" not in ckpt:
        raise RunError(f"{path} holds no checksum (written by an older nanoirl?); start over with --force")
    if checksum(ckpt) != ckpt["sha256"]:
        raise RunError(f"{path}: cannot load the checkpoint: it is damaged (its contents do not match the "
                       "checksum stored in it); start over with --force")
    return ckpt


def load_checkpoint(out, state, args=None):
    """Restore every object in `state` and every RNG from out/ckpt.pt; return the checkpoint dict,
    whose "step" is the number of steps done. With args, print the flags that changed (only
    RESUME_MAY_CHANGE can: prepare_out refused the others)."""
    ckpt = read_checkpoint(out)
    restore(ckpt, state, out)
    set_rng_states(ckpt["rng"])
    for k, new in (plain_config(args) if args else {}).items():
        old = ckpt["config"].get(k)
        if old != new and k not in ("resume", "force"):
            print(f"note: --{k.replace('_', '-')} was {old!r} in the checkpoint, now {new!r}")
    return ckpt


# ---- metrics -------------------------------------------------------------------------------------
def number(v):
    return v.item() if hasattr(v, "item") else v  # 0-d tensors and numpy scalars -> Python


def check_finite(metrics, step, out):
    """Stop the run on a NaN or inf metric, before it is logged or checkpointed."""
    for name, v in metrics.items():
        v = number(v)
        if isinstance(v, float) and not math.isfinite(v):
            raise RunError(f"{name} is {v} at step {step}; {last_good(out)}")


def last_good(out):
    ckpt = Path(out) / CKPT
    return f"the last good checkpoint is {ckpt}" if ckpt.exists() else "no checkpoint was written yet"


def truncate_metrics(path, start, out=None):
    """Keep only the lines of steps < start (the steps the checkpoint covers); drop a cut line.
    The file is rewritten (atomically) only if a line goes; a file that is not regular is left
    alone (prepare_out refuses one; a device such as /dev/full would read forever)."""
    if not path.is_file():
        return
    lines, keep = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True), []
    for line in lines:
        try:
            if json.loads(line)["step"] < start:
                keep.append(line if line.endswith("\n") else line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            pass  # the last line, cut short by a kill
    if keep != lines:
        write_file(path, "".join(keep).encode(), out or path.parent)


def append_line(fd, line, path):
    """Append one whole line to the file open as fd (O_APPEND), or nothing: a write cut by a full
    disk is truncated away, so metrics.jsonl holds only whole lines, and the run stops in one line."""
    size = os.fstat(fd).st_size
    try:
        while line:
            line = line[os.write(fd, line):]
    except OSError as e:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise write_error(path, e, path.parent) from None


class Logger:
    """log(step, metrics): appends {"step", **metrics} to out/metrics.jsonl (written through at
    every line, so a kill loses nothing logged; whole lines only: append_line) and prints
    'step s/total | elapsed | eta | name value ...' every `every` steps. A resumed run (start > 0)
    first drops the lines the checkpoint does not cover, so that the file ends equal to that of an
    uninterrupted run."""
    def __init__(self, out, total, start=0, every=1):
        self.path, self.total, self.start, self.every = Path(out) / METRICS, total, start, every
        self.t0 = time.time()
        if dist.is_main():  # under torchrun rank 0 logs; every rank holds the same global metrics
            truncate_metrics(self.path, start, out)
            try:
                self.file = open(self.path, "ab", buffering=0)  # unbuffered: append_line writes its fd
            except OSError as e:  # e.g. metrics.jsonl is a directory
                raise RunError(f"cannot write {self.path}: {e.strerror}; {last_good(out)}") from None

    def __call__(self, step, metrics):
        if not dist.is_main():
            return
        row = {"step": step, **{k: number(v) for k, v in metrics.items()}}
        append_line(self.file.fileno(), (json.dumps(row) + "\n").encode(), self.path)
        if step % self.every == 0 or step + 1 == self.total:
            elapsed = time.time() - self.t0
            eta = elapsed / (step + 1 - self.start) * (self.total - step - 1)
            values = " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in row.items() if k != "step")
            hms = lambda s: time.strftime("%H:%M:%S", time.gmtime(s))
            print(f"step {step}/{self.total} | {hms(elapsed)} | eta {hms(eta)} | {values}", flush=True)


# metrics.png: panel titles by group, in this order (a metric not named here keeps its key, under
# "other"); the accuracies and win rates get a dashed line at chance, 0.5
PANEL_GROUPS = {
    "evaluation (exact on the toy)": {
        "gold_reward": "gold reward", "win_rate": "win rate vs demonstrations",
        "fkl": "KL(expert || pi)", "rkl": "KL(pi || expert)", "js": "JS(expert, pi)", "tv": "TV(expert, pi)",
        "fkl_demos": "KL(demonstrations || pi)", "traj_entropy": "entropy of d(y|x), nats",
        "length": "response length, tokens with EOS", "eos_rate": "responses ending in EOS",
        "modes_covered": "expert modes holding > 5% mass", "outside_support": "mass outside expert's support"},
    "reward model / discriminator": {
        "rm_accuracy_heldout": "reward accuracy, held-out pairs", "rm_accuracy": "reward accuracy, training pairs",
        "rm_loss": "reward-model loss", "pairs": "pairs in the reward step",
        "reward_offset": "reward offset (demos' mean score)",
        "disc_loss": "discriminator loss", "disc_accuracy": "discriminator accuracy"},
    "policy step": {
        "loss": "SFT loss, NLL per response", "sft_loss": "SFT loss, NLL per response",
        "score": "PPO: reward per response", "kl_ref": "PPO: KL(pi || pi_ref) per response",
        "entropy": "PPO: entropy per token", "pg_loss": "PPO: policy loss", "v_loss": "PPO: value loss",
        "approx_kl": "PPO: approx. KL per update", "clipfrac": "PPO: fraction of ratios clipped",
        "explained_variance": "PPO: value explained variance", "bon_reward": "Best-of-N: reward of the picks",
        "kl_to_target": "exact step: KL(pi || pi*)"},
}
CHANCE = {"win_rate", "rm_accuracy_heldout", "rm_accuracy", "disc_accuracy"}


def plot_metrics(out, names=None, filename=PLOT, xlabel="step"):
    """Draw one small panel per numeric metric of out/metrics.jsonl into out/metrics.png, titled
    and grouped by PANEL_GROUPS; or, with `names`, one row of the panels (a), (b), ... of those
    metrics in that order into out/filename (MLIRL Fig. 2: train_mlirl.py). Rank 0's job."""
    if not dist.is_main() or os.environ.get("NANOIRL_NO_PLOTS"):  # NANOIRL_NO_PLOTS=1: sweeps and tests skip it
        return None
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe on a headless machine
    from matplotlib.ticker import MaxNLocator
    rows = [json.loads(line) for line in (Path(out) / METRICS).read_text().splitlines() if line]
    is_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    logged = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "step" and any(is_num(r.get(k)) for r in rows)]
    titles = {k: t for group in PANEL_GROUPS.values() for k, t in group.items()}
    if names:
        groups = {None: [k for k in names if k in logged]}
    else:
        groups = {g: [k for k in keys if k in logged] for g, keys in PANEL_GROUPS.items()}
        groups["other"] = [k for k in logged if k not in titles]
    groups = {g: keys for g, keys in groups.items() if keys}
    if not groups:
        return None
    cols = min(4, max(len(keys) for keys in groups.values()))
    heights = [math.ceil(len(keys) / cols) * 2.2 + 0.35 * (group is not None) for group, keys in groups.items()]
    # every panel placed by hand (a layout engine takes seconds for 20 panels): a group is a band of
    # rows 2.2 in high under its 0.35 in title, a panel keeps 0.35 in for its title, 0.45 in below
    fig = Figure(figsize=(3 * cols, sum(heights)))
    top = sum(heights)
    for (group, keys), band in zip(groups.items(), heights):
        n_rows = math.ceil(len(keys) / cols)
        if group:
            fig.text(0.5, (top - 0.05) / sum(heights), group, ha="center", va="top", fontsize=10, fontweight="bold")
        grid = fig.add_gridspec(n_rows, cols, left=0.55 / (3 * cols), right=1 - 0.15 / (3 * cols),
                                top=(top - band + n_rows * 2.2 - 0.35) / sum(heights),
                                bottom=(top - band + 0.45) / sum(heights), wspace=0.35, hspace=0.8 / 1.4)
        top -= band
        axes = [fig.add_subplot(grid[i // cols, i % cols]) for i in range(len(keys))]
        for i, (ax, name) in enumerate(zip(axes, keys)):
            steps, values = zip(*[(r["step"], r[name]) for r in rows if is_num(r.get(name))])
            ax.plot(steps, values, lw=1, marker="." if len(steps) < 30 else None)
            if name in CHANCE:
                ax.axhline(0.5, color="0.5", ls="--", lw=0.8, label="chance")
                ax.legend(fontsize=7, loc="best")
            ax.set_title(("(%s) " % "abcdefghijklmnopqrstuvwxyz"[i] if names else "") + titles.get(name, name), fontsize=9)
            ax.set_xlabel(xlabel, fontsize=7, labelpad=1)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and rounds are whole numbers
            ax.tick_params(labelsize=7)
    fig.savefig(Path(out) / filename, dpi=100)
    return Path(out) / filename


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
