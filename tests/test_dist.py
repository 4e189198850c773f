"""
torchrun on the CPU: gloo, 2 ranks, float64 (nanoirl/dist.py).

  the same numbers  each script on the toy GPT, 2 ranks with DDP and with FSDP2 against one
                    process (plain `python`) with the same global batch and seed: the weights of
                    every model in ckpt.pt and every logged metric agree to 1e-9
  resume            a 2-rank run killed with SIGKILL resumes on 2 ranks to the uninterrupted
                    run's weights and metrics; its checkpoint resumes on 1 rank, and on 2 ranks
                    with FSDP2, as well
  text              a random-init Pythia-70m SFT dry run, 2 ranks against 1, in float32 (to ~8 ulps)
  a hang fails      a collective that one rank never joins fails within the process-group timeout
  the way out       through run.script, 2 ranks end their process group cleanly (10 runs in a row, no
                    SIGABRT at exit), a NaN loss on one rank stops both ranks' step together, a bad
                    NANOIRL_DIST_TIMEOUT and a killed rank are one line each

Every launch is a subprocess; the tests of a group start theirs side by side (start-up dominates).
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # every test here starts processes

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-9
# the text dry run in float32 (in float64 a Pythia-70m checkpoint with AdamW moments is 1.7 GB a run):
# a gradient summed in two halves rounds differently, by float32's 6e-8 relative: 1e-6 is ~8 ulps
TEXT_TOL = 1e-6
ENV = {**os.environ, "NANOIRL_DIST_TIMEOUT": "120", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "PYTHONPATH": str(ROOT)}
TOY = {"train_sft.py": ["--model", "toy-gpt", "--steps", "6", "--batch-size", "16", "--eval-every", "6",
                        "--ckpt-every", "3"],
       "train_airl.py": ["--model", "toy-gpt", "--steps", "6", "--rollout-batch-size", "16", "--eval-every", "3",
                         "--ckpt-every", "2", "--disc-steps", "2"],
       "train_mlirl.py": ["--sft-steps", "4", "--batch-size", "16", "--rounds", "1", "--ppo-iterations", "2",
                          "--rollout-batch-size", "16", "--n-demos", "24", "--rm-epochs", "4"]}


def launch(script, out, flags, ranks):
    """Start `script` on `ranks` ranks (0: plain python, one process) writing to out/."""
    cmd = [sys.executable, script] if ranks == 0 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), script]
    out.mkdir(parents=True, exist_ok=True)
    log = open(out.parent / f"{out.name}.log", "w")
    return subprocess.Popen(cmd + flags + ["--out", str(out), "--seed", "2"], cwd=ROOT, env=ENV, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc, out, timeout=300):
    rc = proc.wait(timeout=timeout)
    assert rc == 0, (out.parent / f"{out.name}.log").read_text()[-3000:]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a, b, tol=TOL):
    """Every model and optimizer tensor of ckpt.pt and every logged metric agree to tol, relative
    to the value where it exceeds 1."""
    ma, mb = metrics(a), metrics(b)
    assert len(ma) == len(mb) and len(ma) > 1
    for ra, rb in zip(ma, mb):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert abs(ra[k] - rb[k]) <= tol * max(1, abs(ra[k])), (k, ra["step"], ra[k], rb[k])
    ca, cb = (torch.load(d / "ckpt.pt", weights_only=True) for d in (a, b))
    assert ca["step"] == cb["step"]
    n = 0
    for name, sa in ca["state"].items():
        if isinstance(sa, torch.Tensor):  # a generator's state: the same draws on every rank count
            assert torch.equal(sa, cb["state"][name]), name
            continue
        for k, v in flat(sa).items():
            w = flat(cb["state"][name])[k]
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                assert ((v - w).abs() <= tol * v.abs().clamp_min(1)).all(), (name, k)
                n += v.numel()
    assert n > 1000  # the models' weights were compared, not only counters


def flat(x, prefix=""):
    if isinstance(x, dict):
        return {k2: v2 for k, v in x.items() for k2, v2 in flat(v, f"{prefix}{k}.").items()}
    if isinstance(x, (list, tuple)):
        return {k2: v2 for i, v in enumerate(x) for k2, v2 in flat(v, f"{prefix}{i}.").items()}
    return {prefix: x}


def kill_tree(proc):
    """SIGKILL a process and all its descendants (torchrun's workers are not in its process group),
    and wait until none of them holds the run directory's lock."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [proc.pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    for pid in tree[1:]:
        while Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower():
            time.sleep(0.02)


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    """Every script on the toy GPT in float64: one process, 2 ranks with DDP, 2 ranks with FSDP2."""
    root = tmp_path_factory.mktemp("dist")
    runs = {}
    for script, flags in TOY.items():
        for kind, ranks, extra in (("one", 0, []), ("ddp", 2, []), ("fsdp", 2, ["--fsdp"])):
            runs[script, kind] = root / f"{script[:-3]}-{kind}", launch(script, root / f"{script[:-3]}-{kind}",
                                                                       flags + extra, ranks)
    for out, proc in runs.values():
        finish(proc, out)
    return {k: out for k, (out, _) in runs.items()}


@pytest.mark.parametrize("script", list(TOY))
@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_ranks_compute_what_one_process_does(toy_runs, script, kind):
    assert_same_run(toy_runs[script, "one"], toy_runs[script, kind])


def test_rank_zero_alone_writes_and_prints(toy_runs):
    out = toy_runs["train_airl.py", "ddp"]
    log = (out.parent / f"{out.name}.log").read_text()
    assert log.count("run directory") == 1 and (out / "policy" / "model.safetensors").is_file()
    one = metrics(toy_runs["train_airl.py", "one"])
    assert len(metrics(out)) == len(one) == 6  # one line per step, not one per rank


def test_killed_two_rank_run_resumes_on_two_ranks_on_one_and_sharded(toy_runs, tmp_path):
    """SIGKILL after the checkpoint of step 2 (train_airl.py: PPO, the discriminator, generators)."""
    script, flags = "train_airl.py", TOY["train_airl.py"]
    out = tmp_path / "killed"
    proc = launch(script, out, flags, 2)
    deadline = time.time() + 200
    while not ((out / "metrics.jsonl").exists() and len(metrics(out)) >= 3) and time.time() < deadline:
        time.sleep(0.05)
    kill_tree(proc)  # torchrun and both ranks at once, as a preempted job loses them
    assert 2 <= torch.load(out / "ckpt.pt", weights_only=True)["step"] < 6
    one, fsdp = tmp_path / "one-rank", tmp_path / "fsdp"
    for copy in (one, fsdp):
        subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    resumed = [(out, launch(script, out, flags + ["--resume"], 2)),
               (one, launch(script, one, flags + ["--resume"], 0)),
               (fsdp, launch(script, fsdp, flags + ["--resume", "--fsdp"], 2))]  # whole tensors, sharded again
    for d, proc in resumed:
        finish(proc, d)
    assert_same_run(toy_runs[script, "ddp"], out)
    assert_same_run(toy_runs[script, "one"], one)
    assert_same_run(toy_runs[script, "fsdp"], fsdp)


def test_text_dry_run_on_two_ranks(tmp_path, monkeypatch):
    """train_sft.py on the text path (a tiny GPT-NeoX cached as pythia-70m, byte tokens), in
    float32: the same weights and metrics to TEXT_TOL (the toy's runs above are the float64 check)."""
    from test_scripts import cached_tiny_pythia

    from nanoirl import data
    cached_tiny_pythia(tmp_path / "hf-cache", "pythia-70m", block_size=160)
    monkeypatch.setitem(ENV, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    path = tmp_path / "fake.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data.fake_tldr(12)))
    flags = ["--model", "pythia-70m", "--data", str(path), "--max-prompt-len", "128", "--max-response-len", "12",
             "--truncate-long-responses", "--eval-size", "2", "--steps", "2", "--batch-size", "4", "--dtype", "float32",
             "--eval-every", "2"]  # the posts are cut to fit 128 bytes, the summaries to 12
    procs = [launch("train_sft.py", tmp_path / "one", flags, 0), launch("train_sft.py", tmp_path / "two", flags, 2)]
    finish(procs[0], tmp_path / "one")
    finish(procs[1], tmp_path / "two")
    assert_same_run(tmp_path / "one", tmp_path / "two", tol=TEXT_TOL)


HANG = """
import sys, time, torch, torch.distributed as td
from nanoirl import dist
dist.init("cpu")
if dist.rank() == 0:
    td.all_reduce(torch.ones(1))  # rank 1 never joins
else:
    time.sleep(120)
"""


def test_a_collective_that_a_rank_skips_fails_within_the_timeout(tmp_path):
    (tmp_path / "hang.py").write_text(HANG)
    env = {**ENV, "NANOIRL_DIST_TIMEOUT": "5"}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "0", str(tmp_path / "hang.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode != 0 and time.time() - t0 < 60
    assert "timed out" in (proc.stdout + proc.stderr).lower() or "timeout" in (proc.stdout + proc.stderr).lower()


def test_fsdp_without_torchrun_is_refused_before_anything_is_written(tmp_path):
    proc = subprocess.run([sys.executable, "train_sft.py", "--fsdp", "--out", str(tmp_path / "run")], cwd=ROOT,
                          env={k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE")},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("error: --fsdp shards")
    assert not (tmp_path / "run").exists()


# ---- the way out: 2 ranks started as torchrun starts them, without its agent (cheaper) -----------
def two_ranks(code, tmp_path, env=None, timeout=120):
    """Run `code` as a script on ranks 0 and 1 (gloo), with the environment torchrun gives its
    workers (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), and tmp_path as its argument.
    [(returncode, stdout, stderr)] by rank."""
    (tmp_path / "ranks.py").write_text(code)
    with socket.socket() as s:  # a free port for rank 0's store
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "ranks.py"), str(tmp_path)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**ENV, "NANOIRL_DIST_TIMEOUT": "20", **(env or {}), "RANK": str(r),
                                   "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port)}) for r in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        results.append((p.returncode, out, err))
    return results


EXIT = """
import torch, torch.distributed as td
from nanoirl import dist, run
with run.script():
    dist.init("cpu")
    td.all_reduce(one := torch.ones(1))
    assert one.item() == 2.0
"""


def test_ten_two_rank_runs_in_a_row_end_without_an_abort(tmp_path):
    """Before run.script, about 1 run in 10 to 20 ended in SIGABRT on one rank ('terminate called
    without an active exception') after all its work was done (1 of 14 torchrun runs with the
    process group destroyed but the interpreter's teardown left to run)."""
    for i in range(10):
        for rank, (rc, out, err) in enumerate(two_ranks(EXIT, tmp_path)):
            assert rc == 0 and "terminate" not in err, (i, rank, rc, err[-2000:])


NAN_THEN_KILL = """
import json, os, signal, sys, torch, torch.distributed as td
from nanoirl import dist, reward, run, sft

def ranks_in_step():  # a collective: how many ranks take part
    td.all_reduce(n := torch.ones(1, dtype=torch.float64))
    return n.item()

class Model(torch.nn.Module):  # a policy and a scorer over 3 tokens, whose numbers are NaN on rank 1
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    def logprobs(self, prompts, prompt_mask, responses):
        return self.w.log_softmax(0)[responses] * (float("nan") if dist.rank() == 1 else 1.0)
    def state_scores(self, prompts, prompt_mask, responses):
        h = self.w[responses] * (float("nan") if dist.rank() == 1 else 1.0)
        return torch.cat([h[:, :1], h], 1)

with run.script():
    dist.init("cpu")
    p, m, y = torch.zeros(4, 1, dtype=torch.long), torch.ones(4, 1, dtype=torch.bool), torch.tensor([[1, 2, 0]] * 4)
    seen = {}
    for name in ("sft", "disc"):
        model = dist.wrap(Model())
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        if name == "sft":
            loss = sft.sft_step(model, opt, p, m, y, eos_id=0)
        else:
            loss = reward.discriminator_step(model, opt, p, m, y, y.roll(1, 1), eos_id=0, level="sequence")[0]
        seen[name] = [str(loss), dist.unwrap(model).w.abs().max().item()]  # the loss, and whether a step was taken
    seen["in step"] = ranks_in_step()
    (__import__("pathlib").Path(sys.argv[1]) / f"rank{dist.rank()}.json").write_text(json.dumps(seen))
    if dist.rank() == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # as kill -9 does
    ranks_in_step()  # rank 0 waits for a rank that is gone
"""


def test_a_nan_on_one_rank_stops_both_and_a_killed_rank_is_one_line(tmp_path):
    """SFT's and the discriminator's step with a NaN loss on rank 1 only: both ranks return the NaN,
    neither takes a step, both go on in step (before, rank 1 returned before its backward while
    rank 0 waited in DDP's all-reduce). Then rank 1 is killed (SIGKILL) while rank 0 waits in a
    collective: rank 0 ends with exit status 1 and one line (before: a gloo traceback)."""
    (r0, _, err0), (r1, _, _) = two_ranks(NAN_THEN_KILL, tmp_path)
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen == {"sft": ["nan", 0.0], "disc": ["nan", 0.0], "in step": 2.0}, (rank, seen)
    assert r1 == -signal.SIGKILL and r0 == 1
    # one line (torch's own excepthook puts "[rank0]: " before it)
    assert re.fullmatch(r"(\[rank0\]: )?error: rank 0 of 2: a collective failed \([^\n]*Connection [^\n]*"
                        r"another rank stopped or is stuck[^\n]*\n", err0), err0


def test_a_bad_dist_timeout_is_one_line_naming_it(monkeypatch):
    from nanoirl import cli
    monkeypatch.setenv("RANK", "0")  # as under torchrun: the variable is read before the process group starts
    parser = __import__("argparse").ArgumentParser()
    cli.add_common_args(parser)
    for value in ("abc", "-5", "0", "nan", "1e400"):
        monkeypatch.setenv("NANOIRL_DIST_TIMEOUT", value)
        with pytest.raises(cli.RunError, match=f"^NANOIRL_DIST_TIMEOUT={value!r}: expected the process-group "
                                               "timeout in seconds, a number > 0"):
            cli.device_and_dtype(parser.parse_args(["--device", "cpu"]))


SAVE_MEMORY = """
import argparse, json, re, sys, torch
from nanoirl import dist, resume, run
from nanoirl.model import GPT, GPTConfig

def memory(field):  # VmRSS: resident now; VmHWM: the most resident since the last reset (MB)
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024

with run.script():
    dist.init("cpu")
    config = GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=8, n_embd=512)  # 53 MB in float64
    models, seen = {}, {}
    for n in (1, 3):  # models built on the meta device, sharded, then given memory: no whole copy before a save
        while len(models) < n:
            with torch.device("meta"):
                m = GPT(config).to(torch.float64)
            m = dist.wrap(m, fsdp=True).to_empty(device="cpu")
            with torch.no_grad():
                for p in m.parameters():
                    p.fill_(0.01)
            models[f"model{len(models)}"] = m
        open("/proc/self/clear_refs", "w").write("5")  # Linux: the peak is reset to what is resident now
        before = memory("VmRSS")
        resume.save_checkpoint(sys.argv[1], 1, models, argparse.Namespace(n=n))
        seen[n] = memory("VmHWM") - before  # the save's peak above what was resident before it
    whole = sum(t.numel() * 8 for t in GPT(config).state_dict().values()) / 2 ** 20
    (__import__("pathlib").Path(sys.argv[1]) / f"rank{dist.rank()}.json").write_text(json.dumps({**seen, "whole": whole}))
"""


def test_an_fsdp_checkpoint_gathers_one_tensor_at_a_time(tmp_path):
    """Saving 1, then 3 sharded models of 50 MB each (float64): on rank 1 the peak resident memory
    above that before the save (VmHWM, reset) stays within a few whole tensors (the largest is 8 MB)
    with any number of models (measured 29 / 41 MB; before: every model whole at once, 100 MB more
    for 3 models than for 1); rank 0 holds the whole models on its CPU, the checkpoint it writes,
    and a few tensors more (72 / 179 MB)."""
    results = two_ranks(SAVE_MEMORY, tmp_path)
    assert all(rc == 0 for rc, _, _ in results), [err[-2000:] for _, _, err in results]
    (r0, r1) = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    print(f"peak above the resident memory before the save, MB (a model is {r0['whole']:.0f} MB): "
          f"rank 0 {r0['1']:.0f} / {r0['3']:.0f}, rank 1 {r1['1']:.0f} / {r1['3']:.0f} (1 / 3 models)")
    assert r1["3"] < r1["1"] + 0.5 * r1["whole"] and r1["3"] < 1.5 * r1["whole"]  # not 2 more models
    assert r0["3"] < 4 * r0["whole"]  # the 3 models it writes, and a few tensors
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # the whole weights, as filled in
    assert len(ckpt["state"]) == 3 and all((v == 0.01).all() for v in ckpt["state"]["model2"].values())
