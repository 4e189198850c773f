"""
train_sft.py, train_airl.py and train_mlirl.py as a user runs them: subprocesses from the repository
root on the CPU, each in its own run directory, with HF_HUB_OFFLINE=1 and an empty Hugging Face
cache (nothing is downloaded; a random Pythia falls back to byte tokens).

  run directory  config.json holds the flags, metrics.jsonl one line per step with the shared
                 names, the plots decode as PNG, ckpt.pt and a GPT's policy/ hold the final
                 weights; the toy's logged exact metrics equal a recomputation from those weights,
                 and the printed lines repeat the logged numbers and name every file
  exact resume   killed with SIGKILL mid-run and resumed: the same metrics.jsonl bytes, weights,
                 optimiser and RNG states as an uninterrupted run
  bad input      exit status 1 (argparse: 2), the last line of stderr "error: ..." naming the
                 file:line or the flag, no traceback, and the run directory left as it was
  NaN guard      a non-finite loss or weight stops the run, and ckpt.pt is the last good one
  text dry run   each script end to end on a randomly initialised Pythia-70m (smoke tests)

Independent processes run side by side: most of their time is Python and torch start-up.
"""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nanoirl import data
from nanoirl.checkpoint import load_model, save_model

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["train_sft.py", "train_airl.py", "train_mlirl.py"]
SEED = 3
N_DEMOS = 60  # the toy's default --n-demos

# the shared metric names: PPO's (nanoirl/ppo.py) and the evaluation's (nanoirl/task.py, toy/task.py)
PPO = {"pg_loss", "v_loss", "entropy", "approx_kl", "clipfrac", "explained_variance", "score", "kl_ref"}
TOY_EVAL = {"fkl", "rkl", "js", "tv", "traj_entropy", "length", "eos_rate", "gold_reward", "modes_covered", "outside_support",
            "fkl_demos", "win_rate"}
TEXT_EVAL = {"length", "eos_rate", "eval_temperature"}
MLIRL_ROUND = {"rm_loss", "rm_accuracy", "pairs", "reward_offset"}


def metric_names(script, step, n_rows, evals, eval_every=2, heldout=True):
    """The names of metrics.jsonl row `step`: the script's training numbers, plus the evaluation on
    evaluation steps (every eval_every steps and the last; every round of ML-IRL)."""
    if script == "train_mlirl.py":
        heldout = {"rm_accuracy_heldout"} if heldout else set()  # only with --eval-pairs on text
        return evals if step == 0 else MLIRL_ROUND | heldout | PPO | evals
    train = {"loss"} if script == "train_sft.py" else {"disc_loss", "disc_accuracy", "reward_offset",
                                                       "reward_clipfrac"} | PPO
    return train | evals if (step + 1) % eval_every == 0 or step + 1 == n_rows else train


# ---- running a script ----------------------------------------------------------------------------
class Run:
    """One script started as a subprocess in the repository root. Its stdout and stderr go to
    files (a pipe nobody reads could fill and stall it); wait() returns self with returncode,
    stdout and stderr. out: the run directory, tmp/name unless given."""

    def __init__(self, tmp, name, script, *flags, out=None, env=None):
        self.out = Path(out or tmp / name)
        cache = tmp / "hf-cache"  # empty: no tokenizer, no weights
        cache.mkdir(exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
               "OMP_NUM_THREADS": "1",  # torch's second thread slows small work (conftest.py)
               "HF_DATASETS_CACHE": str(tmp / "datasets-cache"), "NANOIRL_DATA": str(tmp / "no-data"),
               **(env or {})}
        self.logs = tmp / f"{name}.stdout", tmp / f"{name}.stderr"
        with open(self.logs[0], "w") as o, open(self.logs[1], "w") as e:
            argv = [sys.executable, script, *map(str, flags), "--out", str(self.out)]
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=o, stderr=e)

    def wait(self, timeout=600):
        self.returncode = self.proc.wait(timeout)
        self.stdout, self.stderr = (p.read_text() for p in self.logs)
        return self


def run_all(runs):
    """Wait for runs started side by side: {key: Run} -> {key: finished Run}."""
    return {k: r.wait() for k, r in runs.items()}


class InProcess:
    """One script run in this process, as Run runs it in a fresh one, for the behaviours that do
    not need a process of their own (a process costs seconds of start-up; the bad-input and NaN
    cases are dozens): argv parsed by the script's own parser, then its main(), with Run's
    environment. A DataError or RunError ends it as the scripts' hook ends a process (nanoirl/run.py:
    one_line_errors: 'error: <message>', status 1), argparse with its own status 2; stdout and
    stderr are captured. That hook itself is tested on real processes (the Ctrl-C and the
    out-in-use tests)."""

    def __init__(self, tmp, name, script, *flags, out=None, env=None):
        import contextlib
        import importlib
        import io
        from unittest import mock

        from nanoirl.cli import RunError
        from nanoirl.sources import DataError
        self.out = Path(out or tmp / name)
        cache = tmp / "hf-cache"
        cache.mkdir(exist_ok=True)
        env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_DATASETS_CACHE": str(tmp / "datasets-cache"),
               "NANOIRL_DATA": str(tmp / "no-data"), **(env or {})}
        module = importlib.import_module(script[:-3])
        stdout, stderr = io.StringIO(), io.StringIO()
        self.returncode = 0
        # huggingface_hub and datasets read HF_HUB_OFFLINE once, when imported (maybe by an earlier
        # test): without this, an offline run here retries the network for ~25 s before failing
        offline = [mock.patch(f"{m}.HF_HUB_OFFLINE", env["HF_HUB_OFFLINE"] == "1")
                   for m in ("huggingface_hub.constants", "datasets.config") if m in sys.modules]
        with mock.patch.dict(os.environ, env), mock.patch.object(module.parser, "prog", script), \
                contextlib.ExitStack() as patches, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            for patch in offline:
                patches.enter_context(patch)
            try:
                module.main(module.parser.parse_args([*map(str, flags), "--out", str(self.out)]))
            except (DataError, RunError) as e:
                print(f"error: {e}", file=sys.stderr)
                self.returncode = 1
            except SystemExit as e:
                self.returncode = e.code
        self.stdout, self.stderr = stdout.getvalue(), stderr.getvalue()

    def wait(self):
        return self


def rows_of(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def snapshot(path):
    """Every byte under path: None if it does not exist (then nothing may appear there)."""
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def assert_same(a, b, where="ckpt"):
    """Nested checkpoint contents equal exactly: tensors bit for bit, everything else by ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_png(path):
    from matplotlib.image import imread
    image = imread(path)  # decodes every pixel: a truncated or corrupt file raises
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.ndim == 3 and min(image.shape[:2]) >= 100 and image.std() > 0, f"{path}: blank or tiny"


def assert_summary(stdout, out):
    """The closing lines say where everything is: 'run directory <out>' and one line per entry
    '  <kind> <path>  (<size> MB)', a directory (a saved model) sized by its files."""
    lines = stdout.splitlines()
    entries = sorted(out.iterdir())
    assert lines[-len(entries) - 1] == f"run directory {out}"
    for line, p in zip(lines[-len(entries):], entries):
        kind = "model" if p.is_dir() else {"config.json": "config", "metrics.jsonl": "metrics"}.get(
            p.name) or {".png": "plot", ".pt": "checkpoint"}[p.suffix]
        size = sum(f.stat().st_size for f in p.rglob("*")) if p.is_dir() else p.stat().st_size
        assert size > 0 and line == f"  {kind:<10} {p}  ({size / 1e6:.2f} MB)", line


# ---- the toy: the run directory and its numbers --------------------------------------------------
TOY_FLAGS = {  # a few steps; evaluation and checkpoint steps fall inside, the last step does both
    "train_sft.py": ["--steps", 4, "--eval-every", 2, "--ckpt-every", 3],
    "train_airl.py": ["--steps", 3, "--eval-every", 2, "--ckpt-every", 2, "--rollout-batch-size", 32,
                      "--disc-steps", 2],
    "train_mlirl.py": ["--rounds", 2, "--sft-steps", 3, "--ppo-iterations", 2, "--rollout-batch-size", 32,
                       "--rm-epochs", 2],
}
TOY_ROWS = {"train_sft.py": 4, "train_airl.py": 3, "train_mlirl.py": 3}  # steps; rounds + 1 (SFT)
SAVED_MODELS = {"train_sft.py": {"policy"}, "train_airl.py": {"policy", "discriminator"},
                "train_mlirl.py": {"policy", "reward_model"}}
TOY = [(s, m) for s in SCRIPTS for m in ("toy-tabular", "toy-gpt")]


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toy")
    return run_all({(s, m): Run(tmp, f"{s[:-3]}-{m}", s, "--model", m, "--device", "cpu", "--seed", SEED,
                                *TOY_FLAGS[s], env={"NANOIRL_NO_PLOTS": ""}) for s, m in TOY})  # with the plots


def toy_policy(mdp, model, state):
    """A fresh policy of the kind --model builds, holding the weights `state`."""
    from toy.gpt import tiny_gpt
    from toy.tabular import TabularPolicy
    policy = TabularPolicy(mdp, "full") if model == "toy-tabular" else tiny_gpt(mdp)
    policy.load_state_dict(state)
    return policy


def toy_scalar(mdp, model, state):
    from nanoirl.model import ScalarGPT
    from toy.gpt import tiny_config
    from toy.tabular import TabularScalar
    scalar = TabularScalar(mdp) if model == "toy-tabular" else ScalarGPT(tiny_config(mdp)).double()
    scalar.load_state_dict(state)
    return scalar


@pytest.mark.slow
@pytest.mark.parametrize("script,model", TOY)
def test_toy_run_directory(toy_runs, script, model):
    """config.json = the flags, one metrics.jsonl line per step with the shared names, the plots,
    ckpt.pt at the last step with the same config, a GPT's saved models equal to the checkpoint's,
    and the closing lines naming every file."""
    r = toy_runs[script, model]
    assert r.returncode == 0, r.stderr
    out = r.out
    config = json.loads((out / "config.json").read_text())
    flags = TOY_FLAGS[script]
    given = {"model": model, "device": "cpu", "seed": SEED, "out": str(out),
             **{flags[i][2:].replace("-", "_"): flags[i + 1] for i in range(0, len(flags), 2)}}
    assert {k: config[k] for k in given} == given

    rows, n = rows_of(out), TOY_ROWS[script]
    assert [row["step"] for row in rows] == list(range(n))
    for row in rows:
        assert set(row) - {"step"} == metric_names(script, row["step"], n, TOY_EVAL), row["step"]
        assert all(math.isfinite(v) for v in row.values())

    plots = {"metrics.png"} | ({"mlirl_fig2.png"} if script == "train_mlirl.py" else set())
    models = SAVED_MODELS[script] if model == "toy-gpt" else set()
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.jsonl", "ckpt.pt"} | plots | models
    for name in plots:
        assert_png(out / name)
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == n and ckpt["config"] == config

    if model == "toy-gpt":  # Hugging Face GPT-NeoX checkpoints of the final weights
        from nanoirl.model import GPT, ScalarGPT
        key = {"policy": "policy", "discriminator": "disc", "reward_model": "reward_model"}
        for name in models:
            cls = GPT if name == "policy" else ScalarGPT
            saved = load_model(cls, out / name, dtype=torch.float64).state_dict()
            assert_same(saved, ckpt["state"][key[name]], name)
    assert "Traceback" not in r.stderr
    assert_summary(r.stdout, out)


@pytest.mark.slow
@pytest.mark.parametrize("script,model", TOY)
def test_toy_metrics_are_those_of_the_saved_policy(toy_runs, script, model):
    """The last logged exact evaluation, recomputed from ckpt.pt's weights in a fresh policy: the
    forward KL to the expert written out by hand, gold reward, win rate against the
    demonstrations (and ML-IRL's held-out pair accuracy of the saved reward model); the printed
    final numbers are the logged ones."""
    from toy import metrics
    from toy.exact import all_rewards
    from toy.mdp import ToyMDP
    r = toy_runs[script, model]
    assert r.returncode == 0, r.stderr
    rows, mdp = rows_of(r.out), ToyMDP()
    ckpt = torch.load(r.out / "ckpt.pt", weights_only=True)
    policy = toy_policy(mdp, model, ckpt["state"]["policy"])
    with torch.no_grad():
        logd = mdp.trajectory_logprobs(policy)                        # log d_pi(y|x), (prompts, N)
    log_e = mdp.expert_logprob                                        # full support: no 0 log 0
    fkl = (log_e.exp() * (log_e - logd)).sum(-1).mean().item()        # KL(d_expert || d_pi)
    gold = (logd.exp() * mdp.gold_reward()).sum(-1).mean().item()
    prompts, _, responses = mdp.demonstrations(N_DEMOS, torch.Generator().manual_seed(SEED))
    win = metrics.win_rate(mdp, logd, mdp.empirical_logprob(prompts, responses)).mean().item()
    last = rows[-1]
    assert (fkl, gold, win) == pytest.approx((last["fkl"], last["gold_reward"], last["win_rate"]), rel=1e-12)

    if model == "toy-gpt":  # policy/ holds the same policy (the toy's action set is not saved)
        from nanoirl.model import GPT
        saved = load_model(GPT, r.out / "policy", dtype=torch.float64)
        saved.set_allowed_tokens(mdp.action_ids)
        with torch.no_grad():
            assert torch.equal(mdp.trajectory_logprobs(saved), logd)
    if script == "train_mlirl.py":
        rm = toy_scalar(mdp, model, ckpt["state"]["reward_model"])
        with torch.no_grad():
            acc = metrics.pair_accuracy(mdp, all_rewards(mdp, rm, "sequence")).mean().item()
        assert acc == pytest.approx(last["rm_accuracy_heldout"], rel=1e-12)
        assert (f"exact forward KL to the expert: SFT {rows[0]['fkl']:.4f} -> ML-IRL {last['fkl']:.4f} "
                f"(gold reward {rows[0]['gold_reward']:.4f} -> {last['gold_reward']:.4f})") in r.stdout
    else:
        final = next(line for line in r.stdout.splitlines() if line.startswith("final: "))
        assert final == "final: " + ", ".join(f"{k} {last[k]:.4g}" for k in last if k in TOY_EVAL)


def test_rlignment_pairs_come_from_the_policy_before_sft(tmp_path):
    """train_mlirl.py --pairs init-demo (RLignment): the reward model's pairs are every
    demonstration ≻ a sample of pi_init, the policy before SFT. The run draws those samples first
    from its generator (seeded with --seed), so they are reproduced here from a fresh tiny GPT of
    that seed; a sample of the SFT policy would differ."""
    from toy.gpt import tiny_gpt
    from toy.mdp import ToyMDP
    r = InProcess(tmp_path, "init-demo", "train_mlirl.py", "--pairs", "init-demo", "--rounds", 1, "--seed", SEED,
            "--sft-steps", 20, "--ppo-iterations", 1, "--rollout-batch-size", 16, "--rm-epochs", 1).wait()
    assert r.returncode == 0, r.stderr
    mdp = ToyMDP()
    pairs = torch.load(r.out / "ckpt.pt", weights_only=True)["pairs"]
    prompts, mask, demos = mdp.demonstrations(N_DEMOS, torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        init = tiny_gpt(mdp, seed=SEED).sample(prompts, mask, mdp.T, mdp.eos_id, mdp.pad_id, 1.0,
                                               generator=torch.Generator().manual_seed(SEED))[0]
    assert torch.equal(pairs["prompts"], prompts) and torch.equal(pairs["chosen"], demos)
    assert torch.equal(pairs["rejected"], init)


@pytest.mark.slow
def test_mlirl_ppo_step_with_the_script_defaults_reaches_its_exact_target(tmp_path):
    """Round 1 of `python train_mlirl.py` (toy GPT, every default but --rounds): the PPO step must
    land on the target it approximates, pi* ∝ pi_ref exp(r / beta) (MLIRL Eq. 12), with pi_ref the
    SFT policy and r the reward model just trained, both read from ckpt.pt and enumerated exactly.
    Stated bound: KL(pi_PPO || pi*) <= 0.2 nats on every prompt, and in total at most a third of
    KL(pi_ref || pi*) where the step started. Measured (seed 0, with the lr decaying linearly over
    the round and the reward read minus the demonstrations' mean): 0.022/0.0013/0.017 from
    0.131/0.026/0.119. At a constant lr, the same bound held on one machine (0.023/0.008/0.025)
    and failed on another (0.10/0.04/0.39): PPO's float rounding differs between CPUs. At
    --ppo-lr 1e-3 (the old default) it misses by 0.66/5.54/1.21 nats."""
    from nanoirl import soft_pi
    from toy import metrics
    from toy.exact import all_rewards
    from toy.mdp import ToyMDP
    r = InProcess(tmp_path, "mlirl-round1", "train_mlirl.py", "--rounds", 1, "--seed", 0).wait()
    assert r.returncode == 0, r.stderr
    mdp, state = ToyMDP(), torch.load(r.out / "ckpt.pt", weights_only=True)["state"]
    policy, ref = (toy_policy(mdp, "toy-gpt", state[k]) for k in ("policy", "ref"))
    reward_model = toy_scalar(mdp, "toy-gpt", state["reward_model"])
    beta = json.loads((r.out / "config.json").read_text())["beta"]
    with torch.no_grad():
        ref_logd = mdp.trajectory_logprobs(ref)
        target = soft_pi.trajectory_optimum(ref_logd, all_rewards(mdp, reward_model, "sequence"), beta)
        kl = metrics.forward_kl(mdp.trajectory_logprobs(policy), target)   # KL(pi_PPO || pi*) per prompt
        kl_start = metrics.forward_kl(ref_logd, target)
    print("KL(pi_PPO || pi*)", kl.tolist(), "from KL(pi_ref || pi*)", kl_start.tolist())
    assert (kl <= 0.2).all() and kl.sum() <= kl_start.sum() / 3, (kl, kl_start)


# ---- exact resume after SIGKILL -------------------------------------------------------------------
RESUME = {  # case: (script, flags (--ckpt-every 2 or one checkpoint per round), kill once ckpt.pt exists
    #          and this many lines are logged)
    "train_sft.py": ("train_sft.py", ["--steps", 24, "--eval-every", 5, "--ckpt-every", 2], 9),
    "train_airl.py": ("train_airl.py", ["--steps", 10, "--eval-every", 5, "--ckpt-every", 2,
                                        "--rollout-batch-size", 32, "--disc-steps", 2], 5),
    "train_mlirl.py": ("train_mlirl.py", ["--rounds", 4, "--sft-steps", 10, "--ppo-iterations", 3,
                                          "--rollout-batch-size", 32, "--rm-epochs", 2], 3),
    "train_mlirl.py in round 0": ("train_mlirl.py", ["--rounds", 1, "--sft-steps", 3000, "--ckpt-every", 20,
                                                     "--pairs", "init-demo", "--ppo-iterations", 2,
                                                     "--rollout-batch-size", 32, "--rm-epochs", 2], 0),
}


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory):
    """Per case, side by side: an uninterrupted run, and a run killed with SIGKILL once its
    checkpoint exists and kill_after lines are logged, then resumed with --resume.
    {case: (uninterrupted, killed, resumed, the checkpoint at the kill)}."""
    tmp = tmp_path_factory.mktemp("resume")
    flags = {c: ["--model", "toy-tabular", "--device", "cpu", "--seed", SEED, *f] for c, (_, f, _) in RESUME.items()}
    name = lambda c: c.replace(".py", "").replace(" ", "-")
    whole = {c: Run(tmp, f"{name(c)}-whole", s, *flags[c]) for c, (s, _, _) in RESUME.items()}
    cut = {c: Run(tmp, f"{name(c)}-cut", s, *flags[c]) for c, (s, _, _) in RESUME.items()}
    done = {}
    while len(done) < len(RESUME):
        for c in set(RESUME) - set(done):
            metrics, ckpt = cut[c].out / "metrics.jsonl", cut[c].out / "ckpt.pt"
            lines = metrics.read_text().count("\n") if metrics.exists() else 0
            if cut[c].proc.poll() is None and not (ckpt.exists() and lines >= RESUME[c][2]):
                continue
            if cut[c].proc.poll() is None:  # else it ended by itself: the test says so
                os.kill(cut[c].proc.pid, signal.SIGKILL)
            cut[c].wait()
            done[c] = torch.load(ckpt, weights_only=True) if ckpt.exists() else None
        time.sleep(0.01)
    # first a --resume with another --seed: not this run, so refused, and nothing may change
    before = {c: snapshot(cut[c].out) for c in RESUME}
    refused = run_all({c: Run(tmp, f"{name(c)}-refused", RESUME[c][0], *flags[c], "--seed", SEED + 1, "--resume",
                              out=cut[c].out) for c in RESUME})  # processes: a refused run holds --out's lock until it ends
    for c in RESUME:
        refused[c].untouched = snapshot(cut[c].out) == before[c]
    resumed = run_all({c: Run(tmp, f"{name(c)}-resumed", RESUME[c][0], *flags[c], "--resume", out=cut[c].out)
                       for c in RESUME})
    return {c: (whole[c].wait(), cut[c], resumed[c], done[c], refused[c]) for c in RESUME}


@pytest.mark.slow
@pytest.mark.parametrize("case", RESUME)
def test_killed_run_resumes_exactly(resume_runs, case):
    """A run killed with SIGKILL mid-run (the lines it logged past its last checkpoint are dropped
    on resume) and resumed with --resume ends with the metrics.jsonl bytes, weights, optimiser
    states, RNG states and (ML-IRL) pairs of an uninterrupted run. ML-IRL killed inside round 0
    goes on with SFT from its last SFT checkpoint (RLignment's pi_init samples kept in it). A
    --resume with another --seed before it was refused in one line and changed nothing."""
    whole, cut, resumed, ckpt, refused = resume_runs[case]
    assert refused.returncode == 1 and refused.stderr.startswith(
        f"error: --resume: flags differ from the checkpoint's run (--seed {SEED} -> {SEED + 1})"), refused.stderr
    assert refused.untouched, "a refused --resume changed the run directory"
    assert cut.returncode == -signal.SIGKILL, "the run ended before the kill: make it longer"
    assert whole.returncode == 0 and resumed.returncode == 0, whole.stderr + resumed.stderr
    n = len(rows_of(whole.out))
    if case.endswith("round 0"):
        done, sft_steps = ckpt["sft_step"], RESUME[case][1][3]
        assert ckpt["step"] == 0 and 0 < done < sft_steps and done % 20 == 0
        first = next(line for line in resumed.stdout.splitlines() if line.startswith("round 0"))
        assert first.startswith(f"round 0 (SFT) step {done}/{sft_steps} |")  # not from step 0
    else:
        done = ckpt["step"]
        assert 0 < done < n
        first = next(line for line in resumed.stdout.splitlines() if line.startswith("step "))
        assert first.startswith(f"step {done}/{n} |")  # it went on from the checkpoint, not from 0
    assert (cut.out / "metrics.jsonl").read_bytes() == (whole.out / "metrics.jsonl").read_bytes()
    a, b = (torch.load(out / "ckpt.pt", weights_only=True) for out in (whole.out, cut.out))
    assert a["step"] == b["step"] == n
    same = lambda ckpt: {k: v for k, v in ckpt.items() if k not in ("config", "sha256")}  # the config holds --out
    assert_same(same(a), same(b))


@pytest.mark.slow
def test_ctrl_c_stops_with_one_line_and_the_run_resumes(tmp_path):
    """SIGINT (Ctrl-C) mid-run: no traceback, one line naming the last good checkpoint and how to go
    on; that checkpoint and metrics.jsonl pass --resume's checks."""
    from nanoirl import resume
    r = Run(tmp_path, "sigint", "train_sft.py", "--steps", 10 ** 6, "--ckpt-every", 5, "--eval-every", 10 ** 6)
    while r.proc.poll() is None and not ((r.out / "ckpt.pt").exists() and len(rows_of(r.out)) > 20):
        time.sleep(0.05)
    r.proc.send_signal(signal.SIGINT)
    r.wait()
    assert r.returncode == -signal.SIGINT and r.stderr == (
        f"error: interrupted; the last good checkpoint is {r.out / 'ckpt.pt'}: continue with the same command "
        "and --resume\n"), r.stderr
    ckpt = resume.read_checkpoint(r.out)
    resume.check_metrics(r.out / "metrics.jsonl", ckpt["step"])
    assert ckpt["step"] > 0


@pytest.mark.slow
def test_a_second_run_on_an_out_in_use_is_refused(tmp_path):
    """A run holds --out for its whole life: a second one there, even with --force, is refused in
    one line and touches nothing (unlocked, its --force would delete the first run's files under it)."""
    first = Run(tmp_path, "first", "train_sft.py", "--steps", 10 ** 6, "--ckpt-every", 50, "--eval-every", 10 ** 6)
    try:
        while first.proc.poll() is None and not (first.out / "ckpt.pt").exists():
            time.sleep(0.05)
        second = Run(tmp_path, "second", "train_sft.py", "--steps", 3, "--force", out=first.out).wait()
        assert second.returncode == 1 and second.stderr == (
            f"error: --out {first.out} is in use by another run (it holds a lock on the directory); "
            "wait for it to end or use another --out\n"), second.stderr
        assert first.proc.poll() is None  # still running, its files in place
        assert json.loads((first.out / "config.json").read_text())["steps"] == 10 ** 6
    finally:
        first.proc.kill()
        first.wait()


# ---- bad input: one line, the file:line or the flag, nothing lost ---------------------------------
TEXT = ["--model", "random:pythia-70m", "--max-prompt-len", 16, "--max-response-len", 4, "--eval-size", 1,
        "--device", "cpu"]
BAD = ["malformed-json", "missing-field", "empty-prompt", "empty-response", "prompt-too-long",
       "missing-data-file", "unknown-model", "out-under-a-file", "out-is-a-file", "out-exists",
       "resume-without-checkpoint", "resume-and-force", "resume-with-bad-data", "force-with-bad-data",
       "toy-with-data", "more-positions-than-the-model",
       # flags checked at parse time, or once the model's defaults are known: before --out is made
       "steps-negative", "temperature-zero", "too-many-minibatches", "bfloat16-on-the-toy",
       # --data that is not a regular file, text that is not text, a --gold-model without a head
       "data-is-a-directory", "data-is-a-fifo", "lone-surrogate", "gold-model-is-a-causal-lm", "gold-model-missing",
       # --resume that would not continue the run: refused before anything is written
       "resume-with-other-flags", "resume-damaged-checkpoint", "resume-empty-checkpoint", "resume-metrics-deleted"]


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Every case of BAD, started side by side: {case: (Run, expected start of stderr's last line,
    snapshot of --out before)}."""
    tmp = tmp_path_factory.mktemp("bad")

    def jsonl(name, *lines):  # a dict is a record, a str a raw line
        path = tmp / f"{name}.jsonl"
        path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
        return path

    finished = InProcess(tmp, "finished", "train_sft.py", "--model", "toy-tabular", "--device", "cpu", "--seed", SEED,
                         *TOY_FLAGS["train_sft.py"])
    assert finished.returncode == 0, finished.stderr

    def finished_run(name):  # a copy of a finished run, plus a file of the user's
        out = tmp / name
        shutil.copytree(finished.out, out)
        (out / "notes.txt").write_text("mine")
        return out

    ok = {"prompt": "hello there", "response": " hi"}
    tldr = {"subreddit": "tifu", "title": "", "post": "a b", "summary": "c"}
    malformed = jsonl("malformed", ok, '{"prompt": "a", "response": ', ok)
    no_summary = jsonl("no-summary", tldr, tldr, {k: v for k, v in tldr.items() if k != "summary"})
    empty_prompt = jsonl("empty-prompt", ok, {"prompt": "  ", "response": " x"})
    empty_response = jsonl("empty-response", ok, ok, ok, {"prompt": "x", "response": ""})
    long_prompt = jsonl("long-prompt", ok, ok, {"prompt": "x" * 20, "response": " y"})
    surrogate = jsonl("surrogate", ok, '{"prompt": "a\\ud800", "response": " b"}')
    good = jsonl("good", ok, ok, ok)
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    from nanoirl.model import GPT, GPTConfig
    causal_lm = tmp / "causal-lm"
    save_model(GPT(GPTConfig(vocab_size=256, block_size=64, n_layer=1, n_head=2, n_embd=16)), causal_lm)
    damaged = finished_run("damaged")
    raw = bytearray((damaged / "ckpt.pt").read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 200] = bytes(x ^ 0xFF for x in raw[len(raw) // 2:len(raw) // 2 + 200])
    (damaged / "ckpt.pt").write_bytes(bytes(raw))
    (finished_run("empty-ckpt") / "ckpt.pt").write_bytes(b"")
    (finished_run("no-metrics") / "metrics.jsonl").unlink()
    same = ["--model", "toy-tabular", "--device", "cpu", "--seed", SEED, *TOY_FLAGS["train_sft.py"], "--resume"]
    afile = tmp / "afile"
    afile.write_text("not a directory")
    empty_dir = tmp / "empty"
    empty_dir.mkdir()
    cases = {  # case: (script, flags, --out, expected start of the last line of stderr)
        "malformed-json": ("train_sft.py", [*TEXT, "--data", malformed], None,
                           f"error: {malformed}:2: malformed JSON ("),
        "missing-field": ("train_airl.py", [*TEXT, "--data", no_summary], None,
                          f"error: {no_summary}:3: missing field 'summary' (the tldr layout"),
        "empty-prompt": ("train_mlirl.py", [*TEXT, "--data", empty_prompt], None,
                         f"error: {empty_prompt}:2: field 'prompt' is empty"),
        "empty-response": ("train_sft.py", [*TEXT, "--data", empty_response], None,
                           f"error: {empty_response}:4: field 'response' is empty"),
        "prompt-too-long": ("train_airl.py", [*TEXT, "--data", long_prompt], None,
                            f"error: {long_prompt}:3: prompt has 20 tokens, more than --max-prompt-len 16"),
        "missing-data-file": ("train_mlirl.py", [*TEXT, "--data", tmp / "none.jsonl"], None,
                              f"train_mlirl.py: error: argument --data: no such file: {tmp / 'none.jsonl'}"),
        "unknown-model": ("train_mlirl.py", ["--model", "pythia-7b"], None,
                          "train_mlirl.py: error: argument --model: unknown model 'pythia-7b'; use toy-tabular"),
        "out-under-a-file": ("train_sft.py", [], afile / "run",
                             f"error: --out {afile / 'run'} is not writable: Not a directory"),
        "out-is-a-file": ("train_airl.py", [], afile, f"error: --out {afile} is a file, not a directory"),
        "out-exists": ("train_mlirl.py", [], finished_run("exists"),
                       f"error: --out {tmp / 'exists'} already holds ckpt.pt, config.json, metrics.jsonl, ...; "
                       "pass --resume to continue that run or --force to start over"),
        "resume-without-checkpoint": ("train_sft.py", ["--resume"], empty_dir,
                                      f"error: --resume: there is no checkpoint {empty_dir / 'ckpt.pt'}"),
        "resume-and-force": ("train_airl.py", ["--resume", "--force"], None,
                             "train_airl.py: error: argument --force: not allowed with argument --resume"),
        "resume-with-bad-data": ("train_sft.py", [*TEXT, "--data", malformed, "--resume"], finished_run("resume"),
                                 f"error: {malformed}:2: malformed JSON ("),
        "force-with-bad-data": ("train_airl.py", [*TEXT, "--data", empty_prompt, "--force"], finished_run("force"),
                                f"error: {empty_prompt}:2: field 'prompt' is empty"),
        "toy-with-data": ("train_sft.py", ["--model", "toy-tabular", "--data", malformed], None,
                          "error: --data is for text models; --model toy-tabular is the toy MDP"),
        "more-positions-than-the-model": ("train_mlirl.py", [*TEXT, "--data", long_prompt, "--max-prompt-len", 2000,
                                                             "--max-response-len", 53], None,
                                          "error: --max-prompt-len 2000 + --max-response-len 53 tokens exceed "
                                          "--model random:pythia-70m's 2048 positions"),
    }
    cases.update({
        "steps-negative": ("train_sft.py", ["--steps", -5], None,
                           "train_sft.py: error: argument --steps: expected a positive integer, got '-5'"),
        "temperature-zero": ("train_airl.py", ["--temperature", 0], None,
                             "train_airl.py: error: argument --temperature: expected a finite number > 0, got '0'"),
        "too-many-minibatches": ("train_airl.py", ["--num-minibatches", 1000], None,
                                 "error: --num-minibatches 1000 must divide --rollout-batch-size 256"),
        "bfloat16-on-the-toy": ("train_sft.py", ["--dtype", "bfloat16"], None,
                                "error: --dtype bfloat16 is for text models; --model toy-tabular is evaluated exactly"),
        "data-is-a-directory": ("train_sft.py", [*TEXT, "--data", tmp], None,
                                f"error: {tmp}: is a directory, not a JSONL file or a saved dataset"),
        "data-is-a-fifo": ("train_airl.py", [*TEXT, "--data", fifo], None,
                           f"train_airl.py: error: argument --data: {fifo} is a FIFO (named pipe); give a regular file"),
        "lone-surrogate": ("train_sft.py", [*TEXT, "--data", surrogate], None,
                           f"error: {surrogate}:2: field 'prompt' holds a lone surrogate '\\ud800'"),
        "gold-model-is-a-causal-lm": ("train_airl.py", [*TEXT, "--data", good, "--gold-model", causal_lm], None,
                                      f"error: --gold-model {causal_lm}: {causal_lm} has no trained scalar head"),
        "gold-model-missing": ("train_mlirl.py", [*TEXT, "--data", good, "--gold-model", tmp / "none"], None,
                               f"error: --gold-model {tmp / 'none'}: "),
        "resume-with-other-flags": ("train_sft.py", [*same, "--policy-class", "position"], finished_run("other-flags"),
                                    "error: --resume: flags differ from the checkpoint's run "
                                    "(--policy-class 'full' -> 'position'); resume with its flags"),
        "resume-damaged-checkpoint": ("train_sft.py", same, damaged,
                                      f"error: {damaged / 'ckpt.pt'}: cannot load the checkpoint: it is damaged"),
        "resume-empty-checkpoint": ("train_sft.py", same, tmp / "empty-ckpt",
                                    f"error: {tmp / 'empty-ckpt' / 'ckpt.pt'}: cannot load the checkpoint: it is empty"),
        "resume-metrics-deleted": ("train_sft.py", same, tmp / "no-metrics",
                                   f"error: --resume: {tmp / 'no-metrics' / 'metrics.jsonl'} is missing"),
    })
    assert list(cases) == BAD
    before = {case: snapshot(out or tmp / case) for case, (_, _, out, _) in cases.items()}
    runs = {case: InProcess(tmp, case, script, *flags, out=out) for case, (script, flags, out, _) in cases.items()}
    return {case: (runs[case], cases[case][3], before[case]) for case in cases}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_a_one_line_error(bad_runs, case):
    """Exit status 1 with one line 'error: ...' on stderr (argparse: status 2 and its usage
    error naming the flag), no traceback; --out byte-identical, or still absent: a bad data file
    stops the run before --out is touched, even with --resume or --force."""
    r, expected, before = bad_runs[case]
    last = r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr and last.startswith(expected), r.stderr
    if expected.startswith("error: "):
        assert r.returncode == 1 and r.stderr.count("\n") == 1  # the one line, nothing else
    else:
        assert r.returncode == 2 and r.stderr.startswith("usage: ")
    assert snapshot(r.out) == before


# ---- the NaN guard -------------------------------------------------------------------------------
NAN = {  # script, flags, the error; then the checkpoint step left on disk (None: none) and the rows logged
    # lr inf: step 0's loss is finite and its update makes every weight NaN or inf
    "sft-loss": ("train_sft.py", ["--lr", "inf", "--steps", 6, "--ckpt-every", 2, "--eval-every", 100],
                 "error: loss is nan at step 1; no checkpoint was written yet", None, 1),
    "sft-weights": ("train_sft.py", ["--lr", "inf", "--steps", 6, "--ckpt-every", 1, "--eval-every", 100],
                    "error: policy has non-finite weights after step 0; no checkpoint was written yet", None, 1),
    "airl-disc": ("train_airl.py", ["--disc-lr", "inf", "--disc-steps", 2, "--steps", 4, "--rollout-batch-size", 32],
                  "error: disc_loss is nan at step 0; no checkpoint was written yet", None, 0),
    "mlirl-ppo": ("train_mlirl.py", ["--ppo-lr", "inf", "--rounds", 3, "--sft-steps", 5, "--ppo-iterations", 2,
                                     "--rollout-batch-size", 32],
                  "error: pg_loss is nan at step 1 (PPO iteration 0); the last good checkpoint is {ckpt}", 1, 1),
}


@pytest.fixture(scope="module")
def nan_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nan")
    return {case: InProcess(tmp, case, script, "--model", "toy-tabular", "--device", "cpu", "--seed", SEED, *flags)
            for case, (script, flags, *_) in NAN.items()}


@pytest.mark.parametrize("case", NAN)
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(nan_runs, case):
    """An infinite learning rate makes the weights non-finite after one step. The run stops with
    one line at the first non-finite loss (checked before the optimiser step) or weight (checked
    before a checkpoint is written); nothing non-finite is logged, and ckpt.pt is the last good
    checkpoint: the one whose policy has the last logged evaluation."""
    _, _, error, kept, n_rows = NAN[case]
    r = nan_runs[case]
    assert r.returncode == 1 and r.stderr.strip() == error.format(ckpt=r.out / "ckpt.pt"), r.stderr
    rows = rows_of(r.out)
    assert [row["step"] for row in rows] == list(range(n_rows))
    assert all(math.isfinite(v) for row in rows for v in row.values())
    if kept is None:
        assert not (r.out / "ckpt.pt").exists()
        return
    from toy import metrics
    from toy.mdp import ToyMDP
    ckpt = torch.load(r.out / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == kept
    mdp = ToyMDP()
    with torch.no_grad():
        logd = mdp.trajectory_logprobs(toy_policy(mdp, "toy-tabular", ckpt["state"]["policy"]))
    assert metrics.forward_kl(mdp.expert_logprob, logd).mean().item() == pytest.approx(rows[-1]["fkl"], rel=1e-12)


# ---- text dry runs (smoke tests) -----------------------------------------------------------------
TEXT_FLAGS = {  # the fewest steps that still go through every part of the loop
    "train_sft.py": ["--steps", 2, "--batch-size", 2],
    "train_airl.py": ["--steps", 1, "--rollout-batch-size", 2, "--disc-steps", 1],
    "train_mlirl.py": ["--rounds", 1, "--sft-steps", 1, "--batch-size", 2, "--ppo-iterations", 1,
                       "--rollout-batch-size", 2, "--rm-batch-size", 6],
}


@pytest.fixture(scope="module")
def short_tldr(tmp_path_factory):
    """8 TL;DR records of `python -m nanoirl.data`, cut short: prompts of at most 64 byte tokens."""
    records = list(data.fake_tldr(8, seed=0))
    for r in records:
        r.update(subreddit="tifu", title="", post=" ".join(r["post"].split()[:2]),
                 summary=" ".join(r["summary"].split()[:2]))
    path = tmp_path_factory.mktemp("text") / "fake.jsonl"
    data.write_jsonl(path, records)
    return path


@pytest.mark.parametrize("script", ["train_airl.py"])  # SFT and ML-IRL: the README's dry run, tests/test_commands.py
def test_text_dry_run(tmp_path, short_tldr, script):
    """Smoke test: the text path of each script end to end on a GPT-NeoX from the Hugging Face
    cache (a tiny one, cached as EleutherAI/pythia-70m) with byte tokens: metrics.jsonl with the
    shared names, ckpt.pt at the last step, policy/ loadable and equal to the checkpoint's policy.
    The README's random:pythia-70m dry runs of SFT and ML-IRL run as written in
    tests/test_commands.py; --dtype bfloat16 (CPU autocast) in
    tests/test_text_path.py::test_bf16_text_run_resumes_exactly."""
    from nanoirl.model import GPT
    cached_tiny_pythia(tmp_path / "hf-cache", "pythia-70m")
    r = InProcess(tmp_path, "run", script, "--model", "pythia-70m", "--data", short_tldr, "--max-prompt-len", 64,
                  "--max-response-len", 8, "--eval-size", 2, "--device", "cpu", "--seed", SEED,
                  "--truncate-long-responses", *TEXT_FLAGS[script])
    assert r.returncode == 0, r.stderr
    rows = rows_of(r.out)
    n = len(rows)
    assert n == {"train_sft.py": 2, "train_airl.py": 1, "train_mlirl.py": 2}[script]
    for row in rows:
        assert set(row) - {"step"} == metric_names(script, row["step"], n, TEXT_EVAL, heldout=False)
    ckpt = torch.load(r.out / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == n
    policy = load_model(GPT, r.out / "policy")
    assert (policy.config.n_layer, policy.config.n_embd, policy.config.vocab_size) == (1, 16, 256)
    assert_same(policy.state_dict(), ckpt["state"]["policy"], "policy")
    assert_summary(r.stdout, r.out)


# ---- a local checkpoint, and policy/ as the next script's --model ---------------------------------
def byte_level_tokenizer_json(path):
    """A tokenizer.json shaped like Pythia's with no merges: <|endoftext|> 0, <|padding|> 1, the
    243 bytes of UTF-8 text at ids 2..244, NFC, GPT-2's byte-level pre-tokenizer and decoder."""
    from nanoirl.tokenizer import NOT_IN_UTF8, byte_to_unicode
    chars = [c for b, c in sorted(byte_to_unicode().items()) if b not in NOT_IN_UTF8]
    added = [{"id": i, "content": s, "special": True, "normalized": False}
             for i, s in enumerate(["<|endoftext|>", "<|padding|>"])]
    spec = {"added_tokens": added, "normalizer": {"type": "NFC"},
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
            "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "vocab": {"<|endoftext|>": 0, "<|padding|>": 1,
                                               **{c: 2 + i for i, c in enumerate(chars)}}, "merges": []}}
    path.write_text(json.dumps(spec))


def test_saved_policy_is_the_next_scripts_model(tmp_path):
    """The documented pipeline, offline: a tiny GPT-NeoX and its tokenizer.json in the Hugging Face
    cache as EleutherAI/pythia-70m (as a user's cached pythia-1b); train_sft.py --model pythia-70m
    saves policy/, which is then --model of train_airl.py and of train_mlirl.py --sft-steps 0,
    whose reference policy pi_ref (round 1's anchor) is exactly the saved SFT policy."""
    from nanoirl.model import GPT
    cached_tiny_pythia(tmp_path / "hf-cache", "pythia-70m")
    records = [{"prompt": f"question {i}:", "response": f" answer {i}"} for i in range(6)]
    data.write_jsonl(tmp_path / "demos.jsonl", records)
    text = ["--data", tmp_path / "demos.jsonl", "--max-prompt-len", 16, "--max-response-len", 12,
            "--eval-size", 2, "--device", "cpu", "--dtype", "float64"]
    sft = InProcess(tmp_path, "sft", "train_sft.py", "--model", "pythia-70m", *text, "--steps", 3, "--batch-size", 4)
    assert sft.wait().returncode == 0, sft.stderr
    policy = sft.out / "policy"
    nexts = {s: InProcess(tmp_path, s[:-3], s, "--model", policy, *text, *flags) for s, flags in [
        ("train_airl.py", ["--steps", 1, "--rollout-batch-size", 4, "--disc-steps", 1]),
        ("train_mlirl.py", ["--sft-steps", 0, "--rounds", 1, "--ppo-iterations", 1, "--rollout-batch-size", 4])]}
    for r in nexts.values():
        assert r.returncode == 0, r.stderr
    ref = torch.load(nexts["train_mlirl.py"].out / "ckpt.pt", weights_only=True)["state"]["ref"]
    assert_same(ref, load_model(GPT, policy, dtype=torch.float64).state_dict())


def tiny_text_run(tmp_path, demos):
    """Flags of a text run on a tiny local GPT-NeoX (2 layers, d 16) with a byte-level tokenizer."""
    from nanoirl.model import GPT, GPTConfig
    model = tmp_path / "tiny"
    save_model(GPT(GPTConfig(vocab_size=256, block_size=96, n_layer=2, n_head=2, n_embd=16)), model)
    byte_level_tokenizer_json(model / "tokenizer.json")
    return ["--model", model, "--data", demos, "--max-prompt-len", 64, "--max-response-len", 8,
            "--eval-size", 2, "--device", "cpu", "--seed", SEED, "--truncate-long-responses"]


def test_forward_passes_run_under_autocast_and_optimizer_steps_outside(tmp_path, short_tldr):
    """--dtype bfloat16: fp32 weights, bf16 autocast. Autocast keeps its bf16 copy of each weight
    until the outermost autocast block ends, so an optimizer step inside a block would leave later
    forward passes on stale weights. Each script (ML-IRL with its PPO and its Best-of-N policy
    step, and SPIN) runs in this process with global hooks: every transformer forward pass is under
    autocast, and no optimizer step is."""
    import train_airl
    import train_mlirl
    import train_sft
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from nanoirl.model import GPTNeoX
    text = tiny_text_run(tmp_path, short_tldr) + ["--dtype", "bfloat16"]
    seen = {"forward": [], "step": []}
    hooks = [torch.nn.modules.module.register_module_forward_pre_hook(
                 lambda m, _: seen["forward"].append(torch.is_autocast_enabled("cpu")) if isinstance(m, GPTNeoX) else None),
             register_optimizer_step_pre_hook(
                 lambda *_: seen["step"].append(torch.is_autocast_enabled("cpu")))]
    try:
        for script, module, extra in [("train_sft.py", train_sft, []), ("train_airl.py", train_airl, []),
                                      ("train_mlirl.py", train_mlirl, []),
                                      ("train_mlirl.py", train_mlirl, ["--policy-step", "bon", "--bon-steps", 2]),
                                      ("train_mlirl.py", train_mlirl, ["--policy-step", "spin", "--dpo-epochs", 1])]:
            seen["forward"].clear()
            seen["step"].clear()
            flags = [*text, *TEXT_FLAGS[script], *extra, "--out", tmp_path / f"{script}{len(extra)}{''.join(extra[1:2])}"]
            module.main(module.parser.parse_args(list(map(str, flags))))
            assert seen["forward"] and all(seen["forward"]), (script, extra, seen["forward"].count(False))
            assert seen["step"] and not any(seen["step"]), (script, extra, seen["step"].count(True))
    finally:
        for h in hooks:
            h.remove()
    ckpt = torch.load(tmp_path / "train_mlirl.py0" / "ckpt.pt", weights_only=True)["state"]["policy"]
    assert all(v.dtype == torch.float32 for v in ckpt.values())  # fp32 master weights


def test_grad_checkpoint_changes_memory_not_numbers(tmp_path, short_tldr):
    """--grad-checkpoint recomputes each layer in backward: each script on a tiny local GPT-NeoX
    (fp64, text path) logs the same metrics.jsonl bytes and ends with the same weights with and
    without it. On the toy table it is an error, not a flag silently ignored."""
    text = tiny_text_run(tmp_path, short_tldr) + ["--dtype", "float64"]
    runs = {(s, c): InProcess(tmp_path, f"{s[:-3]}-{c}", s, *text, *TEXT_FLAGS[s], *flags)
                    for s in SCRIPTS for c, flags in (("plain", []), ("ckpt", ["--grad-checkpoint"]))}
    for s in SCRIPTS:
        plain, ckpt = runs[s, "plain"], runs[s, "ckpt"]
        assert plain.returncode == ckpt.returncode == 0, plain.stderr + ckpt.stderr
        assert (plain.out / "metrics.jsonl").read_bytes() == (ckpt.out / "metrics.jsonl").read_bytes(), s
        a, b = (torch.load(r.out / "ckpt.pt", weights_only=True)["state"] for r in (plain, ckpt))
        assert_same(a, b, s)
    import train_mlirl
    from nanoirl.task import TextTask, load_task
    task = load_task(TextTask, train_mlirl.parser.parse_args([*map(str, text), "--grad-checkpoint"]), torch.device("cpu"),
                     torch.float64)  # the flag reaches the policy and the scalar models made from it
    assert task.policy.gradient_checkpointing and task.new_scalar().gradient_checkpointing
    r = InProcess(tmp_path, "table", "train_sft.py", "--grad-checkpoint").wait()
    assert r.returncode == 1 and not r.out.exists()
    assert r.stderr.strip() == "error: --grad-checkpoint is for GPT models, not --model toy-tabular"


def test_reference_reward_model_as_gold_model_and_reward_init(tmp_path, short_tldr):
    """A reward model saved as the TL;DR reference code's ScalarModel (built with transformers:
    lm_backbone., scalar_head., base_config, bias): as --gold-model, evaluation rows log
    gold_reward and win_rate; as --reward-init of train_mlirl.py, the reward model starts from
    exactly its weights."""
    transformers = pytest.importorskip("transformers", reason="transformers builds the reference model")
    from safetensors.torch import save_file
    cfg = transformers.GPTNeoXConfig(vocab_size=256, hidden_size=16, num_attention_heads=2, num_hidden_layers=1,
                                     intermediate_size=32, max_position_embeddings=96)
    torch.manual_seed(0)
    backbone, head = transformers.GPTNeoXModel(cfg), torch.nn.Linear(16, 1)
    gold = tmp_path / "gold"
    gold.mkdir()
    save_file({**{"lm_backbone." + k: v.contiguous() for k, v in backbone.state_dict().items()},
               **{"scalar_head." + k: v for k, v in head.state_dict().items()}}, gold / "model.safetensors")
    (gold / "config.json").write_text(json.dumps({"base_config": cfg.to_dict(), "hidden_size": 16, "bias": 2.5}))
    text = tiny_text_run(tmp_path, short_tldr)
    runs = {"sft": InProcess(tmp_path, "sft", "train_sft.py", *text, "--gold-model", gold, "--steps", 2,
                               "--batch-size", 2, "--eval-every", 1),
                    "mlirl": InProcess(tmp_path, "mlirl", "train_mlirl.py", *text, "--reward-init", gold,
                                 *TEXT_FLAGS["train_mlirl.py"])}
    for r in runs.values():
        assert r.returncode == 0, r.stderr
    rows = rows_of(runs["sft"].out)
    assert all({"gold_reward", "win_rate"} <= row.keys() for row in rows)
    assert all(math.isfinite(row["gold_reward"]) and 0 <= row["win_rate"] <= 1 for row in rows)
    init = torch.load(runs["mlirl"].out / "ckpt.pt", weights_only=True)["reward_init"]
    theirs = {**{"gpt_neox." + k: v for k, v in backbone.state_dict().items() if "rotary" not in k},
              **{"score." + k: v for k, v in head.state_dict().items()}}
    assert init.keys() == theirs.keys()
    assert all(torch.equal(init[k], theirs[k]) for k in init)


def cached_tiny_pythia(cache, name, block_size=96):
    """A tiny GPT-NeoX (1 layer, d 16) and a byte-level tokenizer.json in the Hugging Face cache
    `cache` as EleutherAI/<name>, where --model <name> finds it offline, as it finds a user's
    downloaded Pythia."""
    from nanoirl.model import GPT, GPTConfig
    snapshot = cache / f"models--EleutherAI--{name}" / "snapshots" / "abc123"
    save_model(GPT(GPTConfig(vocab_size=256, block_size=block_size, n_layer=1, n_head=2, n_embd=16)), snapshot)
    byte_level_tokenizer_json(snapshot / "tokenizer.json")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")


def test_mlirl_on_tldr_by_default(tmp_path):
    """`python train_mlirl.py --model pythia-70m` and no other flag, offline: one line on the
    TL;DR data it needs and how to get it. With TL;DR-layout data sets that this test writes with
    `datasets` under $NANOIRL_DATA (posts far longer than 512 tokens), the same command plus step
    counts truncates the posts to the default --max-prompt-len 512, runs round 0 and one ML-IRL
    round, and logs rm_accuracy_heldout on the preference set. The model is a tiny GPT-NeoX cached
    as EleutherAI/pythia-70m (the data path is the point, not the model's size)."""
    datasets = pytest.importorskip("datasets", reason="datasets writes the local data sets")
    cached_tiny_pythia(tmp_path / "hf-cache", "pythia-70m", block_size=600)
    bare = InProcess(tmp_path, "bare", "train_mlirl.py", "--model", "pythia-70m")
    assert bare.returncode == 1 and bare.stderr.count("\n") == 1, bare.stderr
    assert bare.stderr.startswith(f"error: {data.TLDR_SFT}:train: not in {tmp_path / 'no-data' / data.TLDR_SFT} "
                                  "and not loadable") and f"python -m nanoirl.data --download {data.TLDR_SFT}" in bare.stderr
    assert not bare.out.exists()
    records = list(data.fake_tldr(6, seed=0))
    for r in records:  # paragraphs of well over 512 bytes in all, the summaries of a few words
        r.update(post="\n".join([r["post"]] * 24), summary=" ".join(r["summary"].split()[:3]))
    root = tmp_path / "data"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records[:4]),
                          "validation": datasets.Dataset.from_list(records[4:])}).save_to_disk(str(root / data.TLDR_SFT))
    pairs = [{"query": p["prompt"][-300:], "chosen": " ".join(p["chosen"].split()[:3]) + "<|endoftext|>",
              "rejected": " ".join(p["rejected"].split()[:3]) + "<|endoftext|>"} for p in data.fake_tldr(4, preferences=True)]
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(pairs)}).save_to_disk(str(root / data.TLDR_PREFERENCES))
    r = InProcess(tmp_path, "tldr", "train_mlirl.py", "--model", "pythia-70m", "--rounds", 1, "--sft-steps", 1,
                  "--batch-size", 2, "--ppo-iterations", 1, "--rollout-batch-size", 2, "--rm-batch-size", 4,
                  env={"NANOIRL_DATA": str(root)})
    assert r.returncode == 0, r.stderr
    assert f"data: {data.TLDR_SFT}:train: 4 of 4 TL;DR posts truncated to fit --max-prompt-len 512 (" \
        in r.stdout, r.stdout
    rows = rows_of(r.out)
    assert [row["step"] for row in rows] == [0, 1] and 0 <= rows[1]["rm_accuracy_heldout"] <= 1
    config = json.loads((r.out / "config.json").read_text())
    assert config["data"] == data.TLDR_SFT + ":train" and config["max_prompt_len"] == 512
    assert config["eval_pairs"] == data.TLDR_PREFERENCES + ":validation[:2048]"
