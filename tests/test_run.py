"""The machinery around a script's loop: flags (nanoirl/cli.py), the run directory (nanoirl/run.py),
atomic checkpoints and exact resume (nanoirl/resume.py), metrics and the NaN guard (nanoirl/logger.py),
whole files (nanoirl/files.py)."""
import argparse
import errno
import json
import os
import random
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from nanoirl import cli, files, logger, resume, run
from nanoirl.checkpoint import load_model
from nanoirl.cli import RunError
from nanoirl.data import iterate_batches


def parse(*argv, **defaults):
    parser = argparse.ArgumentParser(prog="train_x.py")
    cli.add_common_args(parser, **defaults)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps")
    return parser.parse_args([str(a) for a in argv])


def one_line_error(fn, *args):
    with pytest.raises(RunError) as e:
        fn(*args)
    assert "\n" not in str(e.value), "an error must be one line"
    return str(e.value)


def train(out, *flags, crash_at=None, nan_at=None):
    """A tiny training script written the way train_*.py use the machinery: every kind of
    randomness (python, numpy, torch, a torch.Generator, dropout, shuffled batches) is in it."""
    args = parse("--out", out, "--ckpt-every", 4, "--seed", 0, "--device", "cpu", "--dtype", "float64",
                 *flags)
    out = run.prepare_out(args)
    device, dtype = cli.device_and_dtype(args)
    cli.seed_everything(args.seed)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.3), nn.Linear(8, 1)).to(device, dtype)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(args.seed)
    state = {"model": model, "opt": opt, "gen": gen}
    start = resume.load_checkpoint(out, state, args)["step"] if args.resume else 0
    log = logger.Logger(out, args.steps, start, args.log_every)
    data = {"x": torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)}
    batches = iterate_batches(data, 6, args.seed, start)
    for step in range(start, args.steps):
        if step == crash_at:
            return model  # killed here: steps crash_at - 1 ... were logged but not checkpointed
        x = next(batches)["x"] + 0.01 * torch.randn(6, 3, dtype=dtype)
        target = np.random.rand() + random.random() + torch.rand(1, generator=gen, dtype=dtype)
        loss = ((model(x) - target) ** 2).mean() * (float("nan") if step == nan_at else 1)
        metrics = {"loss": loss, "target": target.item()}
        logger.check_finite(metrics, step, out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        log(step, metrics)
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            resume.save_checkpoint(out, step + 1, state, args)
    return model


# ---- flags ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["toy-tabular", "toy-gpt", "pythia-70m", "pythia-1b-deduped",
                                   "pythia-1.4b", "pythia-12b", "random:pythia-160m", "EleutherAI/pythia-1b",
                                   "someone/my-sft_model.v2"])  # a Hub id: nanoirl.hub looks it up
def test_model_names_accepted(model):
    assert parse("--model", model).model == model


@pytest.mark.parametrize("model", ["gpt2", "pythia-3b", "pythia-1b-foo", "random:toy-gpt",
                                   "random:gpt2", "random:tiny", "random:pythia-1b-deduped",
                                   "random:someone/model", "no/such/ckpt.pt", "Pythia-1b"])
def test_unknown_model_is_one_line_error(model, capsys):
    with pytest.raises(SystemExit) as e:
        parse("--model", model)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"train_x.py: error: argument --model: unknown model {model!r}; use toy-tabular")
    assert "pythia-{70m,160m,410m,1b,1.4b,2.8b,6.9b,12b}[-deduped]" in err and "random:" in err


def test_local_checkpoint_path_accepted(tmp_path):
    (tmp_path / "sft.pt").write_bytes(b"x")
    assert parse("--model", tmp_path / "sft.pt").model == str(tmp_path / "sft.pt")


def test_flag_errors(tmp_path, capsys):
    for argv, what in [(["--resume", "--force"], "not allowed with argument"),
                       (["--data", tmp_path / "none.jsonl"], "argument --data: no such file"),
                       (["--ckpt-every", "0"], "argument --ckpt-every: expected a positive integer"),
                       (["--dtype", "int8"], "argument --dtype: invalid choice")]:
        with pytest.raises(SystemExit):
            parse(*argv)
        assert what in capsys.readouterr().err
    args = parse(out="out/sft", model="toy-gpt")  # per-script defaults
    assert (args.out, args.model, args.data, args.seed) == ("out/sft", "toy-gpt", None, 1)


def test_device_and_dtype():
    assert cli.device_and_dtype(parse("--device", "cpu")) == (torch.device("cpu"), torch.float32)
    assert cli.device_and_dtype(parse("--device", "cpu", "--dtype", "float64"))[1] == torch.float64
    assert "--device gpu0: not a device" in one_line_error(cli.device_and_dtype, parse("--device", "gpu0"))
    if not torch.cuda.is_available():
        assert one_line_error(cli.device_and_dtype, parse("--device", "cuda")) == \
            "--device cuda: CUDA is not available on this machine"
    else:
        assert cli.device_and_dtype(parse("--device", "cuda"))[1] == torch.bfloat16


def test_one_line_errors_hook(monkeypatch, capsys):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored after the test
    run.one_line_errors()
    sys.excepthook(RunError, RunError("loss is nan at step 3"), None)
    assert capsys.readouterr().err == "error: loss is nan at step 3\n"


# ---- the run directory ---------------------------------------------------------------------------
def snapshot(out):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}


def tree(out):
    """snapshot of every file and directory under out (saved models, a directory where a file goes)."""
    return {str(p.relative_to(out)): (p.is_dir() or p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*")
            if p.is_dir() or p.is_file()}


def test_fresh_run_writes_config(tmp_path):
    out = run.prepare_out(parse("--out", tmp_path / "a" / "b", "--seed", 7))
    assert json.loads((out / "config.json").read_text())["seed"] == 7


def test_refuses_to_overwrite_without_resume_or_force(tmp_path):
    train(tmp_path, "--steps", 5)
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    msg = one_line_error(run.prepare_out, parse("--out", tmp_path))
    assert msg.startswith(f"--out {tmp_path} already holds ckpt.pt, config.json, metrics.jsonl, ...")
    assert msg.endswith("pass --resume to continue that run or --force to start over")
    assert snapshot(tmp_path) == before  # nothing touched
    other = tmp_path / "other"
    other.mkdir()
    assert one_line_error(run.prepare_out, parse("--out", other, "--resume")) == \
        f"--resume: there is no checkpoint {other / 'ckpt.pt'} to resume from"
    run.prepare_out(parse("--out", tmp_path, "--force"))  # --force removes the run files only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "notes.txt", "other"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_unwritable_out(tmp_path):
    (tmp_path / "file").write_text("x")
    assert one_line_error(run.prepare_out, parse("--out", tmp_path / "file")) == \
        f"--out {tmp_path / 'file'} is a file, not a directory"
    assert one_line_error(run.prepare_out, parse("--out", tmp_path / "file" / "run")) == \
        f"--out {tmp_path / 'file' / 'run'} is not writable: Not a directory"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_out(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o500)
    assert one_line_error(run.prepare_out, parse("--out", tmp_path / "ro")) == \
        f"--out {tmp_path / 'ro'} is not writable: Permission denied"


# ---- checkpoints ---------------------------------------------------------------------------------
def draws(gen):
    return (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(),
            torch.rand(3, generator=gen).tolist())


def test_checkpoint_round_trip_restores_everything(tmp_path):
    args = parse("--out", tmp_path, "--steps", 3)
    cli.seed_everything(5)
    model, gen = nn.Linear(2, 2), torch.Generator().manual_seed(9)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 2)).sum().backward()
    opt.step()
    state = {"model": model, "opt": opt, "gen": gen}
    resume.save_checkpoint(tmp_path, 3, state, args, pairs=torch.arange(4))
    weights, after_save = [p.clone() for p in model.parameters()], draws(gen)
    with torch.no_grad():
        model.weight.add_(1)
    opt.step()
    draws(gen)
    ckpt = resume.load_checkpoint(tmp_path, state)
    assert draws(gen) == after_save  # the same samples as right after the save
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert ckpt["step"] == 3 and ckpt["config"]["steps"] == 3 and ckpt["pairs"].tolist() == [0, 1, 2, 3]
    assert set(ckpt["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert "has no state for reward" in one_line_error(resume.load_checkpoint, tmp_path, {"reward": model})


def test_one_process_needs_no_fsdp2(tmp_path, monkeypatch):
    """A checkpoint's save and load, and the wrappers' helpers, in one process on a torch without
    FSDP2 (its modules made unimportable): nanoirl.dist imports them only once a model is sharded."""
    from nanoirl import dist
    for name in ("torch.distributed.tensor", "torch.distributed.fsdp"):
        monkeypatch.setitem(sys.modules, name, None)  # an import of it raises ImportError
    model = nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 2)).sum().backward()
    opt.step()
    resume.save_checkpoint(tmp_path, 1, {"model": model, "opt": opt}, parse("--out", tmp_path))
    resume.load_checkpoint(tmp_path, {"model": model, "opt": opt})
    assert not dist.is_sharded(model) and dist.wrap(model) is model
    with dist.full_weights(model) as whole:
        assert whole is model
    assert not dist.has_fsdp2()


def test_sigterm_stops_with_one_line_as_ctrl_c_does(monkeypatch, capsys):
    """run.script turns SIGTERM into the Ctrl-C way out: one line, how to resume, no traceback."""
    import signal
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored after the test
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(KeyboardInterrupt) as stop:
            with run.script():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(10 ** 8):  # the handler runs between two bytecodes
                    pass
    finally:
        signal.signal(signal.SIGTERM, handler)
    sys.excepthook(KeyboardInterrupt, stop.value, None)
    assert re.fullmatch(r"error: stopped by SIGTERM; (nothing to resume|the last good checkpoint|no checkpoint)[^\n]*\n",
                        capsys.readouterr().err)


def test_crash_while_saving_keeps_the_good_checkpoint(tmp_path, monkeypatch):
    args = parse("--out", tmp_path)
    model = nn.Linear(2, 2)
    resume.save_checkpoint(tmp_path, 4, {"model": model}, args)
    good = (tmp_path / "ckpt.pt").read_bytes()

    def killed_mid_write(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # as if SIGKILL landed inside torch.save
    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        resume.save_checkpoint(tmp_path, 8, {"model": model}, args)
    monkeypatch.undo()
    assert (tmp_path / "ckpt.pt.tmp").exists() and (tmp_path / "ckpt.pt").read_bytes() == good
    assert resume.load_checkpoint(tmp_path, {"model": model})["step"] == 4
    resume.save_checkpoint(tmp_path, 8, {"model": model}, args)  # the next save goes through
    assert resume.load_checkpoint(tmp_path, {"model": model})["step"] == 8
    assert not (tmp_path / "ckpt.pt.tmp").exists()
    (tmp_path / "ckpt.pt").write_bytes(b"garbage")
    assert one_line_error(resume.load_checkpoint, tmp_path, {}).startswith(
        f"{tmp_path / 'ckpt.pt'}: cannot load the checkpoint")


def test_killed_run_resumes_to_the_same_metrics(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    model_a = train(a)
    train(b, crash_at=7)  # checkpoint at step 4; steps 4-6 logged, then killed
    with open(b / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # a line cut by the kill
    (b / "ckpt.pt.tmp").write_bytes(b"partial")  # a checkpoint cut by the kill
    assert len((b / "metrics.jsonl").read_text().splitlines()) == 8
    model_b = train(b, "--resume")
    assert (b / "metrics.jsonl").read_bytes() == (a / "metrics.jsonl").read_bytes()
    assert len((a / "metrics.jsonl").read_text().splitlines()) == 10
    assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters()))
    assert "note: --resume" not in capsys.readouterr().out  # resume/force are not config changes


def test_resume_refuses_flags_that_change_the_run(tmp_path, capsys):
    """A --resume with a flag that changes the run (--steps: the schedule; --seed; --model ...)
    is refused in one line naming each such flag, before anything is written; the flags of
    RESUME_MAY_CHANGE (--log-every ...) may differ and are noted. A refused resume leaves the run
    resumable: killed, refused, then resumed, it ends as an uninterrupted run, byte for byte."""
    a, b = tmp_path / "a", tmp_path / "b"
    train(a)
    train(b, crash_at=7)  # checkpoint at step 4
    before = snapshot(b)
    for flags, named in [(["--steps", 12], "--steps 10 -> 12"), (["--seed", 1, "--model", "toy-gpt"],
                         "--model 'toy-tabular' -> 'toy-gpt', --seed 0 -> 1")]:
        msg = one_line_error(run.prepare_out, parse("--out", b, "--ckpt-every", 4, "--seed", 0, "--device", "cpu",
                                                    "--dtype", "float64", "--resume", *flags))
        assert msg.startswith(f"--resume: flags differ from the checkpoint's run ({named})"), msg
        assert snapshot(b) == before  # config.json not rewritten, metrics.jsonl not cut
    train(b, "--resume", "--log-every", 3)
    assert (b / "metrics.jsonl").read_bytes() == (a / "metrics.jsonl").read_bytes()
    assert "note: --log-every was 1 in the checkpoint, now 3" in capsys.readouterr().out


def test_damaged_checkpoint_is_one_line_naming_it(tmp_path):
    """Empty, random bytes, or 200 flipped bytes inside a tensor: one line naming the file, never
    the advice to load with weights_only=False; with --resume, --out is left as it was."""
    train(tmp_path, "--steps", 4)
    ckpt = tmp_path / "ckpt.pt"
    good = ckpt.read_bytes()
    big = nn.Linear(64, 64).double()
    resume.save_checkpoint(tmp_path, 4, {"model": big}, parse("--out", tmp_path, "--steps", 4))
    raw = bytearray(ckpt.read_bytes())
    weight = bytes(big.weight.detach().numpy().tobytes()[:64])
    at = raw.find(weight) + 1000  # inside the weight's bytes
    raw[at:at + 200] = bytes(x ^ 0x5A for x in raw[at:at + 200])
    cases = {"empty (0 bytes)": b"", "damaged or not a checkpoint": os.urandom(5000),
             "damaged (its contents do not match the checksum": bytes(raw)}
    for what, content in cases.items():
        ckpt.write_bytes(content)
        before = snapshot(tmp_path)
        for call in (lambda: resume.load_checkpoint(tmp_path, {"model": big}),
                     lambda: run.prepare_out(parse("--out", tmp_path, "--resume", "--steps", 4))):
            msg = one_line_error(call)
            assert msg.startswith(f"{ckpt}: cannot load the checkpoint: it is {what}"), msg
            assert "weights_only" not in msg
        assert snapshot(tmp_path) == before
    ckpt.write_bytes(good)
    assert resume.load_checkpoint(tmp_path, {})["step"] == 4


def test_resume_refuses_a_lost_or_damaged_metrics_log(tmp_path):
    """The checkpoint covers steps 0-3: a metrics.jsonl that is missing, short or damaged before
    step 4 would lose history on resume, so --resume refuses (a line cut after them is fine)."""
    train(tmp_path, crash_at=6)  # checkpoint at 4, steps 4 and 5 logged past it
    metrics = tmp_path / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    args = parse("--out", tmp_path, "--resume", "--ckpt-every", 4, "--seed", 0, "--device", "cpu", "--dtype", "float64")
    for content, what in [(None, f"{metrics} is missing"), ("".join(lines[:3]), f"{metrics} holds 3 steps"),
                          ("".join(lines[:2]) + '{"step": 2, "lo\n' + "".join(lines[3:]), f"{metrics}:3 is not the line of step 2")]:
        metrics.unlink(missing_ok=True)
        if content is not None:
            metrics.write_text(content)
        msg = one_line_error(run.prepare_out, args)
        assert msg.startswith(f"--resume: {what}"), msg
    metrics.write_text("".join(lines[:5]) + '{"step": 5, "lo')  # cut by a kill after the covered steps
    run.prepare_out(args)


def test_one_run_per_directory(tmp_path):
    """--out is locked (flock on the directory) for the whole run: a second run is refused in one
    line, before it writes anything; the lock goes with the process that held it."""
    import fcntl
    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)  # another run holds it
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert one_line_error(run.prepare_out, parse("--out", out)) == \
            f"--out {out} is in use by another run (it holds a lock on the directory); wait for it to end or use another --out"
        assert list(out.iterdir()) == []
    finally:
        os.close(fd)
    run.prepare_out(parse("--out", out))
    assert (out / "config.json").exists()


def test_force_removes_every_file_a_run_writes(tmp_path):
    """--force over an earlier run: its checkpoints, logs, plots and saved models (policy/,
    discriminator/, reward_model/) go, the user's files stay."""
    for name in ["ckpt.pt", "ckpt.pt.tmp", "config.json", "metrics.jsonl", "metrics.png", "mlirl_fig2.png", "notes.txt"]:
        (tmp_path / name).write_text("x")
    for name in ["policy", "discriminator", "reward_model", "mine"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_text("x")
    run.prepare_out(parse("--out", tmp_path, "--force"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "mine", "notes.txt"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_full_disk_while_saving_is_one_line(tmp_path, monkeypatch):
    """A full disk during a checkpoint write (ckpt.pt.tmp made a link to /dev/full, whose writes
    fail with ENOSPC; then torch.save raising it): one line, the temp file removed, the previous
    ckpt.pt intact and loadable."""
    args = parse("--out", tmp_path)
    model = nn.Linear(2, 2)
    resume.save_checkpoint(tmp_path, 4, {"model": model}, args)
    good = (tmp_path / "ckpt.pt").read_bytes()
    (tmp_path / "ckpt.pt.tmp").symlink_to("/dev/full")
    msg = one_line_error(resume.save_checkpoint, tmp_path, 8, {"model": model}, args)
    assert msg == (f"cannot write the checkpoint of step 7 to {tmp_path / 'ckpt.pt.tmp'}: no space left on the "
                   f"device; the last good checkpoint is {tmp_path / 'ckpt.pt'}")
    def full(obj, f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", full)
    assert one_line_error(resume.save_checkpoint, tmp_path, 8, {"model": model}, args) == msg
    assert not os.path.lexists(tmp_path / "ckpt.pt.tmp") and (tmp_path / "ckpt.pt").read_bytes() == good
    monkeypatch.undo()
    assert resume.load_checkpoint(tmp_path, {"model": model})["step"] == 4


def full_disk_open(monkeypatch, module, names):
    """Writes to a file named in `names` through `module`'s open() fail as on a full disk: half the
    bytes reach the file, then ENOSPC."""
    import builtins

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()
    real = builtins.open
    monkeypatch.setattr(module, "open", lambda path, *a, **k: Full(real(path, *a, **k)) if any(
        n in os.fspath(path) for n in names) else real(path, *a, **k), raising=False)


NO_SPACE = "no space left on the device; "


def test_full_disk_on_config_and_metrics_is_one_line(tmp_path, monkeypatch):
    """A full disk while config.json is first written, while a --resume drops the steps the
    checkpoint does not cover, or while a metrics line is appended: one line worded as the
    checkpoint's, and nothing half-written: no 0-byte config.json, a resume that changes nothing
    (config.json is rewritten only after metrics.jsonl), metrics.jsonl of whole lines only."""
    out = tmp_path / "fresh"
    full_disk_open(monkeypatch, files, ["config.json"])
    assert one_line_error(run.prepare_out, parse("--out", out)) == \
        f"cannot write {out / 'config.json'}: {NO_SPACE}no checkpoint was written yet"
    assert list(out.iterdir()) == []  # the rerun is not refused for a file left behind
    monkeypatch.undo()

    b = tmp_path / "b"
    train(b, crash_at=7)  # checkpoint at step 4, steps 4-6 logged after it
    before = snapshot(b)
    full_disk_open(monkeypatch, files, ["metrics.jsonl"])
    msg = one_line_error(train, b, "--resume", "--log-every", 3)  # --log-every may change: config.json would
    assert msg == f"cannot write {b / 'metrics.jsonl'}: {NO_SPACE}the last good checkpoint is {b / 'ckpt.pt'}"
    assert snapshot(b) == before
    monkeypatch.undo()

    log = logger.Logger(b, 10, start=7)
    log(7, {"loss": 1.0})
    whole = (b / "metrics.jsonl").read_bytes()
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, data[:5]) and (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")) if fd == log.file.fileno() else real(fd, data))
    assert one_line_error(log, 8, {"loss": 2.0}) == \
        f"cannot write {b / 'metrics.jsonl'}: {NO_SPACE}the last good checkpoint is {b / 'ckpt.pt'}"
    monkeypatch.undo()
    assert (b / "metrics.jsonl").read_bytes() == whole  # the cut line taken back
    (b / "metrics.jsonl").unlink()
    (b / "metrics.jsonl").symlink_to("/dev/full")  # a real ENOSPC from the kernel
    assert one_line_error(logger.Logger(b, 10, start=7), 7, {"loss": 1.0}).startswith(
        f"cannot write {b / 'metrics.jsonl'}: {NO_SPACE}")


def test_full_disk_on_a_saved_model_keeps_the_old_one(tmp_path, monkeypatch):
    """policy/ (and reward_model/, discriminator/) is written beside, then swapped in: a full disk
    while its weights are written leaves the previous policy/ whole, and no temp directory."""
    from nanoirl.model import CONFIGS, GPT
    torch.manual_seed(0)
    old, new = GPT(CONFIGS["tiny"]), GPT(CONFIGS["tiny"])
    run.save_model_dir(old, tmp_path / "policy", tmp_path, also=lambda d: (d / "tokenizer.json").write_text("{}"))
    before = snapshot(tmp_path / "policy")
    assert sorted(before) == ["config.json", "model.safetensors", "tokenizer.json"]
    full_disk_open(monkeypatch, files, ["model.safetensors"])
    assert one_line_error(run.save_model_dir, new, tmp_path / "policy", tmp_path) == \
        f"cannot write {tmp_path / 'policy'}: {NO_SPACE}no checkpoint was written yet"
    monkeypatch.undo()
    assert snapshot(tmp_path / "policy") == before and sorted(p.name for p in tmp_path.iterdir()) == ["policy"]
    run.save_model_dir(new, tmp_path / "policy", tmp_path)  # a full save replaces the whole directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]
    assert sorted(p.name for p in (tmp_path / "policy").iterdir()) == ["config.json", "model.safetensors"]
    assert torch.equal(load_model(GPT, tmp_path / "policy").embed_out.weight, new.embed_out.weight)


# ---- metrics -------------------------------------------------------------------------------------
def test_nan_guard(tmp_path):
    with pytest.raises(RunError) as e:
        train(tmp_path, nan_at=6)
    assert str(e.value) == f"loss is nan at step 6; the last good checkpoint is {tmp_path / 'ckpt.pt'}"
    assert resume.load_checkpoint(tmp_path, {})["step"] == 4  # kept
    assert [json.loads(l)["step"] for l in open(tmp_path / "metrics.jsonl")] == list(range(6))
    assert one_line_error(logger.check_finite, {"kl": torch.tensor(float("-inf"))}, 0, tmp_path / "x") == \
        "kl is -inf at step 0; no checkpoint was written yet"
    logger.check_finite({"loss": 1.0, "n": 3, "name": "x"}, 0, tmp_path)  # finite: no error


def test_logger_lines_plot_and_summary(tmp_path, capsys, monkeypatch):
    out = run.prepare_out(parse("--out", tmp_path))
    log = logger.Logger(out, total=10, every=3)
    for step in range(10):
        metrics = {"loss": torch.tensor(1 / (step + 1)), "n_tokens": 100 + step}
        if step % 4 == 0:
            metrics["eval_acc"] = np.float64(0.5)  # logged on some steps only
        log(step, metrics)
    lines = capsys.readouterr().out.splitlines()
    assert [l.split(" |")[0] for l in lines] == ["step 0/10", "step 3/10", "step 6/10", "step 9/10"]
    assert "| eta 00:00:00 | loss 1 | n_tokens 100 | eval_acc 0.5" in lines[0]
    rows = [json.loads(l) for l in open(out / "metrics.jsonl")]
    assert rows[1] == {"step": 1, "loss": 0.5, "n_tokens": 101}
    monkeypatch.setenv("NANOIRL_NO_PLOTS", "1")
    assert logger.plot_metrics(out) is None and not (out / "metrics.png").exists()   # sweeps and tests skip it
    monkeypatch.delenv("NANOIRL_NO_PLOTS")
    png = logger.plot_metrics(out)
    assert png == out / "metrics.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run.summary(out)
    printed = capsys.readouterr().out
    for what in ["config", "metrics", "plot"]:
        assert what in printed
    assert str(out / "metrics.png") in printed and str(out / "config.json") in printed


# ---- every flag of the scripts checked before anything is written -------------------------------
BAD_FLAGS = [  # (script, flag, value): each value makes no sense for that flag
    *[(s, "--steps", v) for s in ("train_sft", "train_airl") for v in ("0", "-5")],
    *[(s, "--batch-size", v) for s in ("train_sft", "train_mlirl") for v in ("0", "-1")],
    *[("train_sft", "--lr", v) for v in ("-1", "nan", "0")],
    *[(s, "--eval-every", "0") for s in ("train_sft", "train_airl")],
    *[(s, "--n-demos", v) for s in ("train_sft", "train_airl", "train_mlirl") for v in ("0", "-3")],
    *[(s, "--seed", v) for s in ("train_sft", "train_mlirl") for v in ("-1", "4294967296", "1.5")],
    *[("train_sft", "--eval-size", v) for v in ("0", "-3")],
    ("train_airl", "--disc-steps", "0"), ("train_airl", "--disc-lr", "nan"), ("train_airl", "--alpha", "1"),
    *[(s, "--num-minibatches", "0") for s in ("train_airl", "train_mlirl")],
    *[(s, "--rollout-batch-size", "0") for s in ("train_airl", "train_mlirl")],
    *[(s, "--temperature", v) for s in ("train_airl", "train_mlirl") for v in ("nan", "0", "-1", "inf")],
    ("train_airl", "--beta", "-1"), ("train_airl", "--ppo-lr", "-1"),
    ("train_mlirl", "--ppo-iterations", "0"), ("train_mlirl", "--rm-batch-size", "0"),
    ("train_mlirl", "--rm-epochs", "0"), ("train_mlirl", "--bon-n", "0"), ("train_mlirl", "--bon-steps", "0"),
    ("train_mlirl", "--rm-lr", "nan"), ("train_mlirl", "--sft-lr", "-1"), ("train_mlirl", "--sft-steps", "-1"),
    ("train_mlirl", "--rounds", "-1"), ("train_mlirl", "--beta", "-1"), ("train_mlirl", "--beta", "0"),
    ("train_mlirl", "--sample-temperature", "-1"),
    ("train_sft", "--ckpt-every", "0"), ("train_sft", "--log-every", "-2"), ("train_sft", "--micro-batch-size", "0"),
    ("train_sft", "--max-prompt-len", "0"), ("train_sft", "--max-response-len", "x"),
]


def script_parser(name):
    import importlib
    return importlib.import_module(name).parser


@pytest.mark.parametrize("script,flag,value", BAD_FLAGS)
def test_bad_flag_values_are_refused_at_parse_time(script, flag, value, capsys):
    """argparse's exit 2 and one 'error: argument --flag: ...' line, before main() runs."""
    with pytest.raises(SystemExit) as e:
        script_parser(script).parse_args([flag, value])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f": error: argument {flag}: " in last, last


@pytest.mark.parametrize("script", ["train_sft", "train_airl", "train_mlirl"])
def test_help_shows_every_default(script):
    """--help: every flag with a default prints it, or its help says how the default is picked."""
    parser = script_parser(script)
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            continue  # a flag picked per model (None) says so in its help: "(default: 0.1 toy ...)"
        assert f"(default: {action.default})" in text, action.option_strings
    assert "(default: 1)" in text and "--seed SEED seed of every random number generator (default: 1)" in text


@pytest.mark.parametrize("script,flags,error", [
    ("train_airl", ["--num-minibatches", "3"], "--num-minibatches 3 must divide --rollout-batch-size 256"),
    ("train_mlirl", ["--num-minibatches", "1000", "--rollout-batch-size", "8"],
     "--num-minibatches 1000 must divide --rollout-batch-size 8"),
    ("train_sft", ["--dtype", "bfloat16"], "--dtype bfloat16 is for text models; --model toy-tabular is evaluated exactly"),
    ("train_airl", ["--temperature", "1e-45"], "--temperature 1e-45 is below 0.01: fp32 logits / T overflow"),
    ("train_mlirl", ["--temperature", "0.001"], "--temperature 0.001 is below 0.01: fp32 logits / T overflow"),
    ("train_mlirl", ["--sample-temperature", "1e-45"], "--sample-temperature 1e-45 is below 0.01: fp32 logits / T "
     "overflow, and every sample is already the most likely token; 0 samples greedily"),
    ("train_sft", ["--device", "meta"], "--device meta: not supported; use cpu, cuda, cuda:N or auto"),
    ("train_mlirl", ["--device", "mps"], "--device mps: not supported; use cpu, cuda, cuda:N or auto"),
])
def test_checks_after_defaults_come_before_out(tmp_path, script, flags, error):
    """Checks that need the per-model defaults run before --out is made: a corrected rerun is
    never refused because a failed one left a half-made run directory."""
    import importlib
    module = importlib.import_module(script)
    out = tmp_path / "run"
    args = module.parser.parse_args(["--model", "toy-tabular", "--device", "cpu", *flags, "--out", str(out)])
    with pytest.raises(RunError) as e:
        module.main(args)
    assert str(e.value).startswith(error), str(e.value)
    assert not out.exists()


def test_float32_on_the_toy(tmp_path):
    """--dtype float32 on the toy trains in float32 and is still evaluated exactly, in float64:
    the same numbers as a float64 run to float32's precision."""
    import train_sft
    runs = {}
    for dtype in ("float32", "float64"):
        args = train_sft.parser.parse_args(["--device", "cpu", "--dtype", dtype, "--steps", "3", "--eval-every", "3",
                                            "--out", str(tmp_path / dtype)])
        train_sft.main(args)
        runs[dtype] = json.loads((tmp_path / dtype / "metrics.jsonl").read_text().splitlines()[-1])
    assert runs["float32"]["fkl"] == pytest.approx(runs["float64"]["fkl"], rel=1e-4)
    assert runs["float32"]["win_rate"] == pytest.approx(runs["float64"]["win_rate"], rel=1e-4)


def test_bad_run_files_and_paths_are_one_line(tmp_path):
    """An --out whose name is too long, metrics.jsonl that is a directory, ckpt.pt that is a FIFO
    (torch.load would wait on it forever): one line, nothing written."""
    for out, error in [(tmp_path / ("x" * 300), "File name too long"),
                       (tmp_path / "/".join(["y" * 200] * 21), "File name too long")]:
        assert one_line_error(run.prepare_out, parse("--out", out)) == f"--out {out}: {error}"
    train(tmp_path / "a", "--steps", 4)
    (tmp_path / "a" / "metrics.jsonl").unlink()
    (tmp_path / "a" / "metrics.jsonl").mkdir()
    (tmp_path / "b").mkdir()
    os.mkfifo(tmp_path / "b" / "ckpt.pt")
    for out, name, kind in [("a", "metrics.jsonl", "a directory"), ("b", "ckpt.pt", "a FIFO (named pipe)")]:
        before = tree(tmp_path / out)
        for flag in ("--resume", "--force"):
            args = parse("--out", tmp_path / out, flag, "--ckpt-every", 4, "--seed", 0, "--device", "cpu",
                         "--dtype", "float64", "--steps", 4)  # train's flags: the resume would go on
            assert one_line_error(run.prepare_out, args) == \
                f"{tmp_path / out / name} is {kind}, where the run keeps a file of its own; move it away"
            assert tree(tmp_path / out) == before


def test_resume_refuses_changed_data(tmp_path):
    """--resume after the --data file's contents changed (same name, same size) is refused like a
    changed flag, in one line, nothing written; with the same contents it resumes."""
    import train_sft
    from test_scripts import tiny_text_run
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps({"prompt": f"a{i}", "response": " b"}) + "\n" for i in range(4)))
    flags = [*map(str, tiny_text_run(tmp_path, demos)), "--steps", "1", "--batch-size", "2", "--out", str(tmp_path / "run")]
    train_sft.main(train_sft.parser.parse_args(flags))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    before = tree(tmp_path / "run")
    demos.write_text(demos.read_text().replace('"a3"', '"a4"'))
    with pytest.raises(RunError) as e:
        train_sft.main(train_sft.parser.parse_args([*flags, "--resume"]))
    from nanoirl.data import load_demonstrations
    from nanoirl.task import fingerprint
    new = fingerprint(load_demonstrations(str(demos)))
    assert new != config["data_sha256"]
    assert str(e.value) == (f"--resume: the contents of --data {demos} changed since the checkpoint (fingerprint "
                            f"{config['data_sha256']} -> {new}); resume with the run's data, or start a new run "
                            "with another --out or --force")
    assert tree(tmp_path / "run") == before
    demos.write_text(demos.read_text().replace('"a4"', '"a3"'))
    train_sft.main(train_sft.parser.parse_args([*flags, "--resume"]))  # the same contents again: resumes
