"""
Checkpoints that resume exactly, and the checks that --resume passes before anything is written.

ckpt.pt, in the run directory (--out), is one dict: {"step", "config", "rng", "state", "sha256",
plus what a script adds (e.g. MLIRL's pairs)}. It is written to ckpt.pt.tmp, fsynced, then
renamed over ckpt.pt, so a run killed at any moment keeps its last good checkpoint; the sha256 of
its own contents is checked on every load. --resume checks everything before it writes anything:
the checkpoint's checksum, the flags against the checkpoint's (only RESUME_MAY_CHANGE may differ)
and metrics.jsonl against the checkpoint, whose later lines (steps it does not cover) are dropped.
Step convention: the loop runs `for step in range(start, steps)`, logs metrics under `step`,
and a checkpoint written after it stores step + 1, the number of steps done = where to resume.

    state = {"policy": policy, "opt": opt, "gen": gen}
    start = resume.load_checkpoint(out, state, args)["step"] if args.resume else 0
    ... resume.save_checkpoint(out, step + 1, state, args)
"""
import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from nanoirl import dist
from nanoirl.cli import RunError
from nanoirl.files import why_not_written, write_atomically

CKPT, CONFIG, METRICS = "ckpt.pt", "config.json", "metrics.jsonl"  # in the run directory (nanoirl/run.py)
# flags that may differ on --resume: where and how fast the run computes, not what it computes
# (micro-batches sum the same gradients; --grad-checkpoint recomputes the same activations; the
# number of ranks and --fsdp split the same computation: a checkpoint resumes with any of them)
RESUME_MAY_CHANGE = ("resume", "force", "out", "device", "log_every", "ckpt_every", "micro_batch_size",
                     "grad_checkpoint", "fsdp")


def plain_config(args):
    return json.loads(json.dumps(vars(args), default=str))  # only JSON values: loads weights_only


def last_good(out):
    ckpt = Path(out) / CKPT
    return f"the last good checkpoint is {ckpt}" if ckpt.exists() else "no checkpoint was written yet"


def write_error(path, error, out):
    """The one line of a failed write (an OSError: a full disk, a quota, an I/O error), worded as
    the checkpoint's: 'cannot write <path>: no space left on the device; the last good checkpoint is ...'."""
    return RunError(f"cannot write {path}: {why_not_written(error)}; {last_good(out)}")


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


# ---- the checks of --resume ----------------------------------------------------------------------
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
        try:
            write_atomically(path, keep)
        except OSError as e:
            raise write_error(path, e, out or path.parent) from None
