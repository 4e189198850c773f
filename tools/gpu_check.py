"""
The device check: everything that needs a GPU, in one command of about 8 minutes on one H200,
every number into OUTDIR/gpu_check.json (README, "Speed at 1B").

    python tools/gpu_check.py OUTDIR             # on CUDA: pythia-1b at TL;DR's shapes
    python tools/gpu_check.py OUTDIR --tiny      # the same steps on the CPU, a tiny GPT-NeoX, seconds

Steps, in this order, each in its own try (a failure is recorded with its exception, and the
next step runs), each with a time budget (BUDGETS; all together --budget), the JSON rewritten
after each one so that a timeout keeps what finished:
  cuda_tests             the suite's CUDA tests (pytest -k CUDA_TESTS, a subprocess), each outcome
  train_sft, train_mlirl the scripts in this process on random:pythia-1b, fake TL;DR data,
    (train_airl later)   --dtype bfloat16, 512-token prompts, 53-token responses, rollout batch 64,
                         micro-batch 8: seconds per SFT step and per PPO iteration (rollout +
                         update; Probe), torch.cuda.max_memory_allocated per call. ML-IRL stops
                         after its round-0 checkpoint and goes on with --resume; its round scores
                         2,048 held-out pairs. The largest batch a transformer forward pass saw,
                         without and with gradients, by phase, against --forward-batch-size
  bench                  bench.main at pythia-1b beside transformers: train, sample, ppo
  bench_grad_checkpoint  bench's ppo with --grad-checkpoint
  train_airl             (its 31 GB checkpoint is the slowest write: after bench)
  bench_large            pythia-2.8b ppo with --grad-checkpoint, only if its budget is left
Run directories and data go to a temporary directory (--work), each run's removed after its step:
a pythia-1b checkpoint takes 12-31 GB. Figures are skipped (NANOIRL_NO_PLOTS). Without CUDA the
check runs --tiny. bench.py and the scripts are imported, not copied; nanoirl/ never imports this.
"""
import argparse
import contextlib
import functools
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the scripts and bench.py are top-level modules
os.environ.setdefault("NANOIRL_NO_PLOTS", "1")  # metrics.png costs seconds a run and shows nothing here
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights, byte tokens: nothing to download, no retries

import torch  # noqa: E402

import bench  # noqa: E402
import train_airl  # noqa: E402
import train_mlirl  # noqa: E402
import train_sft  # noqa: E402
from nanoirl import cli, data, mlirl, ppo, resume, reward, sft  # noqa: E402
from nanoirl.checkpoint import save_model  # noqa: E402
from nanoirl.model import GPT, GPTConfig, GPTNeoX  # noqa: E402
from nanoirl.resume import METRICS  # noqa: E402
from nanoirl.task import TextTask  # noqa: E402
from nanoirl.tokenizer import ByteTokenizer  # noqa: E402

CUDA_TESTS = "(cuda or device_and_dtype) and not gpu_check"  # pytest -k: the tests that take another path on
# CUDA, not this check's own test
# the shapes: TL;DR's on CUDA (issue 24), tiny ones on the CPU; budgets in seconds
SHAPES = {
    "cuda": dict(model="random:pythia-1b", dtype="bfloat16", prompt_len=512, response_len=53, eval_size=64,
                 batch=64, micro_batch=8, forward_batch=64, pairs=2048,
                 bench=["--warmup", "1", "--repeats", "3"], ppo_grid="64x53", large="pythia-2.8b"),
    "cpu": dict(model=None, dtype="float32", prompt_len=256, response_len=8, eval_size=4,  # fake posts: 256 bytes
                batch=8, micro_batch=2, forward_batch=4, pairs=32,
                bench=["--batch", "2", "--sample-batch", "3", "--prompt-len", "12", "--response-len", "5",
                       "--warmup", "0", "--repeats", "1"], ppo_grid="2x5", large="tiny"),
}
BUDGETS = {"cuda": {"cuda_tests": 45, "train_sft": 60, "train_mlirl": 180, "train_airl": 120,
                    "bench": 90, "bench_grad_checkpoint": 50, "bench_large": 90},
           "cpu": {"cuda_tests": 60, "train_sft": 30, "train_mlirl": 30, "train_airl": 30,
                   "bench": 30, "bench_grad_checkpoint": 30, "bench_large": 30}}
OPTIONAL = {"bench_large"}  # started only when its whole budget is left


class StepTimeout(BaseException):
    """The step's budget is spent (SIGALRM). Not an Exception: no `except Exception` on the way swallows it."""


class Interrupted(Exception):
    """Raised after a run's first checkpoint, to continue it with --resume (a kill, in-process)."""


# -----------------------------------------------------------------------------------------------
# the probe: phases timed, forward batches recorded, while a script runs in this process


class Probe:
    """Wraps the functions a script's step is made of (PHASES) to time each call, synchronized,
    and GPTNeoX.forward (the transformer of every policy and scalar model) to record the largest
    batch it sees, without and with gradients, by the phase it runs in. On CUDA the peak memory of
    each phase and of the whole call: torch.cuda.max_memory_allocated read and reset whenever a
    phase starts or ends (mark). stop_after: raise Interrupted after that many checkpoints, as if
    the run had been killed."""
    PHASES = [(sft, "sft_step"), (ppo, "rollout"), (ppo, "update"), (reward, "discriminator_step"),
              (reward, "demonstration_offset"), (mlirl, "demonstration_offset"), (mlirl, "sample_pairs"),
              (mlirl, "reward_step"), (TextTask, "evaluate"), (TextTask, "reward_accuracy"),
              (resume, "save_checkpoint"), (resume, "load_checkpoint")]  # (module or class, name it is called by)

    def __init__(self, device):
        self.device, self.seconds, self.largest, self.stack = device, {}, {}, []
        self.stop_after, self.checkpoints = None, 0
        self.peak_gb, self.call_peak_gb = {}, None  # None: not on CUDA

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def mark(self):
        """The peak since the last mark, to every phase running since then and to the call."""
        if self.device.type == "cuda":
            gb = torch.cuda.max_memory_allocated() / 1e9
            for name in set(self.stack):
                self.peak_gb[name] = max(self.peak_gb.get(name, 0), gb)
            self.call_peak_gb = max(self.call_peak_gb or 0, gb)
            torch.cuda.reset_peak_memory_stats()

    def timed(self, name, f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            self.sync()
            self.mark()
            self.stack.append(name)
            t0 = time.perf_counter()
            try:
                out = f(*args, **kwargs)
                self.sync()
            finally:
                self.mark()
                self.stack.pop()
            self.seconds.setdefault(name, []).append(time.perf_counter() - t0)
            if name == "save_checkpoint":
                self.checkpoints += 1
                if self.checkpoints == self.stop_after:
                    raise Interrupted(f"stopped after checkpoint {self.checkpoints}")
            return out
        return wrapper

    def seen(self, forward):
        @functools.wraps(forward)
        def wrapper(module, idx, *args, **kwargs):
            key = ("grad" if torch.is_grad_enabled() else "no_grad", self.stack[-1] if self.stack else "other")
            self.largest[key] = max(self.largest.get(key, 0), idx.shape[0])
            return forward(module, idx, *args, **kwargs)
        return wrapper

    @contextlib.contextmanager
    def installed(self):
        saved = [(owner, name, getattr(owner, name)) for owner, name in self.PHASES if hasattr(owner, name)]
        saved.append((GPTNeoX, "forward", GPTNeoX.forward))
        try:
            for owner, name, f in saved[:-1]:
                setattr(owner, name, self.timed(name, f))
            GPTNeoX.forward = self.seen(GPTNeoX.forward)
            yield self
        finally:
            for owner, name, f in saved:
                setattr(owner, name, f)

    def forward_batches(self, forward_batch_size, micro_batch_size):
        by = lambda grad: {p: n for (g, p), n in sorted(self.largest.items()) if g == grad}
        no_grad, grad = by("no_grad"), by("grad")
        largest = max(no_grad.values(), default=None)
        return {"forward_batch_size": forward_batch_size, "micro_batch_size": micro_batch_size,
                "largest_no_grad": largest, "largest_no_grad_by_phase": no_grad,
                "largest_with_grad": max(grad.values(), default=None), "largest_with_grad_by_phase": grad,
                "no_grad_within_forward_batch_size": largest is not None and largest <= forward_batch_size}


def median_after_first(xs):
    """The steady value: the median without the first call (CUDA's start-up), unless it is all."""
    return statistics.median(xs[1:] or xs) if xs else None


# -----------------------------------------------------------------------------------------------
# the steps


def prepare_data(work, s):
    """Fake TL;DR demonstrations (--eval-size held out, one rollout batch to train on) and
    s["pairs"] held-out preference pairs, as `python -m nanoirl.data` writes them."""
    demos, prefs = work / "fake.jsonl", work / "fake-prefs.jsonl"
    data.write_jsonl(demos, data.fake_tldr(s["batch"] + s["eval_size"], seed=0))
    data.write_jsonl(prefs, data.fake_tldr(s["pairs"], seed=1, preferences=True))
    return demos, prefs


def default_work_dir():
    """/dev/shm when it has room for ML-IRL's two pythia-1b checkpoints (2 x 18 GB while one
    replaces the other) and AIRL's one (31 GB): in memory, the checkpoints' disk writes leave the
    step timings; else the system's temp directory."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and shutil.disk_usage(shm).free > 48e9 else None


def tiny_model(work):
    """A tiny GPT-NeoX with random weights and the byte tokenizer, as a local --model directory."""
    path = work / "tiny-gpt-neox"
    torch.manual_seed(0)
    save_model(GPT(GPTConfig(vocab_size=320, block_size=288, n_layer=2, n_head=2, n_embd=32)), path)
    ByteTokenizer().save(path / "tokenizer.json")
    return str(path)


def run_script(module, flags, device, s, resume=False):
    """module.main on flags in this process under a Probe; with resume, stopped after the first
    checkpoint and continued with --resume. Seconds per step, peak memory, forward batches. An
    error or timeout carries what was measured until then (its .partial: where an OOM struck)."""
    probe, calls, metrics = Probe(device), [], Path(flags[flags.index("--out") + 1]) / METRICS

    def result():
        t = probe.seconds
        iterations = [r + u for r, u in zip(t.get("rollout", []), t.get("update", []))]
        return {"calls": calls, "phases_s": t, "sft_step_s": median_after_first(t.get("sft_step", [])),
                "ppo_iteration_s": median_after_first(iterations), "ppo_iterations_s": iterations,
                "peak_gb": max((c["peak_gb"] for c in calls), default=None) if device.type == "cuda" else None,
                "phases_peak_gb": probe.peak_gb,
                "forward_batches": probe.forward_batches(s["forward_batch"], s["micro_batch"]),
                "metrics": [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else None}
    with probe.installed():
        for again in ([False, True] if resume else [False]):
            probe.stop_after = None if again or not resume else probe.checkpoints + 1
            argv = flags + ["--resume"] * again
            probe.mark()
            probe.call_peak_gb = None
            t0 = time.perf_counter()
            call = {"argv": argv, "stopped_after_checkpoint": False}
            calls.append(call)
            try:
                module.main(module.parser.parse_args(argv))
            except Interrupted:
                call["stopped_after_checkpoint"] = True
            except BaseException as e:  # an error, or the step's timeout: keep what was measured
                probe.mark()
                call.update(seconds=time.perf_counter() - t0, peak_gb=probe.call_peak_gb, error=repr(e)[:500])
                e.partial = result()
                raise
            probe.mark()
            call.update(seconds=time.perf_counter() - t0, peak_gb=probe.call_peak_gb)
            gc.collect()
            torch.cuda.empty_cache()
    if resume and not calls[0]["stopped_after_checkpoint"]:
        raise RuntimeError("the run ended before its first checkpoint: nothing was resumed")
    return result()


def script_steps(work, device, s):
    """(name, function) of the three scripts' steps, each in its own run directory; the data and
    the flags they share are made by the first step that runs."""
    B = str(s["batch"])
    scripts = {
        "train_sft": (train_sft, ["--steps", "3", "--batch-size", B], False),
        "train_mlirl": (train_mlirl, ["--rounds", "1", "--sft-steps", "2", "--batch-size", B,
                                      "--ppo-iterations", "2", "--rollout-batch-size", B, "--rm-batch-size", B,
                                      "--eval-pairs", "PAIRS"], True),  # PAIRS: the held-out pairs' file
        "train_airl": (train_airl, ["--steps", "2", "--rollout-batch-size", B, "--disc-steps", "1"], False)}

    @functools.cache
    def shared():
        demos, prefs = prepare_data(work, s)
        text = ["--model", s["model"] or tiny_model(work), "--data", str(demos), "--max-prompt-len",
                str(s["prompt_len"]), "--max-response-len", str(s["response_len"]), "--eval-size", str(s["eval_size"]),
                "--truncate-long-responses", "--device", device.type, "--dtype", s["dtype"],
                "--micro-batch-size", str(s["micro_batch"]), "--forward-batch-size", str(s["forward_batch"])]
        return text, str(prefs)

    def step(name, module, extra, resume):
        text, prefs = shared()
        flags, out = text + [prefs if f == "PAIRS" else f for f in extra], work / name
        try:
            return {"flags": flags, **run_script(module, flags + ["--out", str(out)], device, s, resume)}
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return [(name, functools.partial(step, name, *v)) for name, v in scripts.items()]


def bench_steps(device, s):
    """(name, function) of bench.py's sections, called through bench.main."""
    base = ["--device", device.type, *s["bench"]]
    if device.type == "cpu":
        base = ["--config", "tiny", *base]
    hw = {}  # the matmul rate and copy bandwidth, measured once (seconds on a CPU)

    def one(*extra):
        args = bench.parser.parse_args([*base, *extra])
        hw.setdefault("measured", bench.ceilings(device, args))
        return bench.main(args, hw["measured"])
    return [("bench", lambda: one("--sections", "train,sample,ppo", "--ppo-grid", s["ppo_grid"])),
            ("bench_grad_checkpoint", lambda: one("--sections", "ppo", "--ppo-grid", s["ppo_grid"], "--grad-checkpoint")),
            ("bench_large", lambda: one("--config", s["large"], "--sections", "ppo", "--ppo-grid", s["ppo_grid"],
                                        "--grad-checkpoint"))]


def cuda_tests():
    """The suite's CUDA tests in a subprocess (the step's alarm kills it); each test's outcome
    from pytest's JUnit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        files = [str(f.relative_to(ROOT)) for f in sorted((ROOT / "tests").glob("test_*.py")) if "cuda" in f.read_text()]
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", CUDA_TESTS,
                f"--junitxml={xml}", *files]  # collecting only the files that name CUDA: seconds, not a minute
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        print(done.stdout[-4000:], done.stderr[-4000:])
        tests = {}
        for case in ET.parse(xml).getroot().iter("testcase"):
            failed = case.find("failure") if case.find("failure") is not None else case.find("error")
            outcome = "failed" if failed is not None else "skipped" if case.find("skipped") is not None else "passed"
            why = failed if failed is not None else case.find("skipped")
            tests[f"{case.get('classname')}::{case.get('name')}"] = {
                "outcome": outcome, "time": float(case.get("time", 0)),  # JUnit's name: 0 when skipped
                **({"message": (why.get("message") or "")[:2000]} if why is not None else {})}
    if done.returncode not in (0, 5) or any(t["outcome"] == "failed" for t in tests.values()):
        raise RuntimeError(f"pytest exited {done.returncode}: " + ", ".join(
            k for k, t in tests.items() if t["outcome"] == "failed"))
    return {"selection": CUDA_TESTS, "argv": argv[1:], "returncode": done.returncode, "tests": tests,
            "passed": sum(t["outcome"] == "passed" for t in tests.values()),
            "skipped": sum(t["outcome"] == "skipped" for t in tests.values())}


# -----------------------------------------------------------------------------------------------
# the runner


def write(report, path):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, path)


def on_alarm(signum, frame):
    raise StepTimeout()


def run_step(report, path, outdir, name, fn, budget, deadline, optional):
    """fn() as the step `name`: its result, or its error, timeout or skip, into the report; its
    printed output into OUTDIR/name.log; the JSON written before and after."""
    entry = report["steps"][name] = {"status": "running", "budget_s": budget}
    left = deadline - time.time()
    if left < (budget if optional else 10):
        entry.update(status="skipped", reason=f"{left:.0f} s left of --budget, the step's budget is {budget} s")
        write(report, path)
        return
    write(report, path)
    limit = min(budget, left)
    t0 = time.time()
    handler = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        with open(outdir / f"{name}.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            result = fn()
        entry.update(status="finished", result=result)
    except StepTimeout as e:
        entry.update(status="timeout", error=f"over its budget of {limit:.0f} s", result=getattr(e, "partial", None))
    except (Exception, SystemExit) as e:  # bench.py and argparse stop with SystemExit
        entry.update(status="failed", error=f"{type(e).__name__}: {e}", result=getattr(e, "partial", None),
                     traceback=traceback.format_exc().splitlines()[-30:])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, handler)
    entry["seconds"] = time.time() - t0
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    write(report, path)
    print(f"{name}: {entry['status']} in {entry['seconds']:.1f} s" + (f" ({entry['error']})" if "error" in entry else ""),
          flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", help="gpu_check.json and one log per step go here")
    parser.add_argument("--tiny", action="store_true", help="the CPU and tiny shapes (automatic without CUDA)")
    parser.add_argument("--budget", type=cli.positive_int, default=480, help="seconds for every step together")
    parser.add_argument("--work", default=None,
                        help="where run directories and data go, removed after each step (default: /dev/shm "
                             "with 48 GB free, else the system's temp directory)")
    args = parser.parse_args(argv)
    tiny = args.tiny or not torch.cuda.is_available()
    device = torch.device("cpu" if tiny else "cuda")
    if tiny:
        torch.set_num_threads(1)  # tiny tensors: a second thread slows them ~10x on a busy CPU (tests/conftest.py)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / "gpu_check.json"
    try:
        import transformers
    except ImportError:
        transformers = None
    s = SHAPES[device.type]
    report = {"argv": sys.argv if argv is None else argv, "tiny": tiny, "budget_s": args.budget,
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "transformers": transformers and transformers.__version__,
              "cuda": torch.version.cuda,
              "gpu_memory_gb": torch.cuda.get_device_properties(0).total_memory / 1e9 if device.type == "cuda" else None,
              "shapes": s, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "steps": {}}
    t0 = time.time()
    deadline = t0 + args.budget
    if not args.tiny and tiny:
        print("no CUDA device here: the tiny check on the CPU")
    with tempfile.TemporaryDirectory(dir=args.work or default_work_dir(), prefix="gpu-check-") as work:
        report["work"] = work
        sft_, mlirl_, airl_ = script_steps(Path(work), device, s)
        bench_, checkpointing, large = bench_steps(device, s)
        steps = [("cuda_tests", cuda_tests), sft_, mlirl_, bench_, checkpointing, airl_, large]
        for name, fn in steps:
            run_step(report, path, outdir, name, fn, BUDGETS[device.type][name], deadline, name in OPTIONAL)
    report["seconds"] = time.time() - t0
    write(report, path)
    print_summary(report)
    print(f"wrote {path} in {report['seconds']:.0f} s")
    return report


def print_summary(report):
    """One line per step with its headline numbers (the device's output shows the end of stdout)."""
    for name, entry in report["steps"].items():
        r, words = entry.get("result") or {}, []
        for key in ("sft_step_s", "ppo_iteration_s", "peak_gb"):
            if isinstance(r.get(key), float):
                words.append(f"{key} {r[key]:.3g}")
        if r.get("phases_peak_gb"):
            phase = max(r["phases_peak_gb"], key=r["phases_peak_gb"].get)
            words.append(f"highest phase peak {r['phases_peak_gb'][phase]:.3g} GB in {phase}")
        if "forward_batches" in r:
            fb = r["forward_batches"]
            words.append(f"largest no-grad batch {fb['largest_no_grad']} (--forward-batch-size {fb['forward_batch_size']})")
        words += [f"{row['metric']}: {bench.fmt(row['ours'])}" + (f" vs {bench.fmt(row['transformers'])}"
                  if row["transformers"] is not None else "") for row in r.get("table", [])]
        if "passed" in r:
            words.append(f"{r['passed']} passed, {r['skipped']} skipped")
        print(f"{name:<22} {entry['status']:<9} {entry.get('seconds', 0):6.1f} s  " + "; ".join(
            words + [entry.get("error") or entry.get("reason") or ""]).strip("; "))


if __name__ == "__main__":
    main()
