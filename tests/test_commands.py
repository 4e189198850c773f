"""
Every command that README.md, the pages of docs/ and the three scripts' docstrings show runs
(docs/guide.md's teaching ladder is run by tests/test_docs.py), offline, in one working directory,
in the order they are documented, so that the documented chains hold (SFT's policy/ is ML-IRL's
--model), and none of them changes the repository's work tree:
  as written  the text dry runs (`python -m nanoirl.data ...`, `--model random:pythia-70m`, and
              ML-IRL from the dry run's policy/): random weights and byte tokens, on the CPU
  fast        the toy commands, with FAST's small settings appended (argparse keeps the last value
              of a repeated flag) and an --out of their own; the Pythia commands, the same way, on a
              tiny GPT-NeoX with a byte-level tokenizer.json cached as EleutherAI/pythia-1b;
              `python -m toy.plots` and `python sweep_mlirl.py` with small settings and their own
              --out, relative to the working directory (the command that regenerates figures/
              writes the working directory's)
  skipped     installing, downloading, this test suite itself, and bench.py on CUDA without one
"""
import concurrent.futures
import hashlib
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # every test here starts processes

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
LADDER = "docs/guide.md, teaching ladder"  # run by tests/test_docs.py::test_ladder_command_runs
SCRIPTS = ["train_sft.py", "train_airl.py", "train_mlirl.py"]
FAST = {  # appended to the toy's and Pythia's commands
    "train_sft.py": ["--steps", "3", "--eval-every", "3"],
    "train_airl.py": ["--steps", "2", "--eval-every", "2", "--rollout-batch-size", "16", "--disc-steps", "1"],
    "train_mlirl.py": ["--rounds", "1", "--sft-steps", "3", "--ppo-iterations", "1", "--rollout-batch-size", "16",
                       "--rm-epochs", "1", "--bon-steps", "2"],
}
TEXT_FAST = {"train_sft.py": ["--max-prompt-len", "256", "--eval-size", "2", "--batch-size", "2"],
             "train_airl.py": ["--max-prompt-len", "256", "--eval-size", "2", "--rollout-batch-size", "2"],
             "train_mlirl.py": ["--max-prompt-len", "256", "--eval-size", "2", "--batch-size", "2",
                                "--rollout-batch-size", "2"]}


def documented():
    """[(source, command)]: the ```bash blocks of README.md and of each page of docs/, then each
    script's docstring, line by line, comments cut, `a && b` split. The commands of the guide's
    teaching ladder have the source LADDER."""
    sources = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        ladder = re.search(r"^## Teaching ladder\n.*?(?=^## |\Z)", text, re.S | re.M) if doc == "docs/guide.md" else None
        for block in re.finditer(r"^```bash\n(.*?)^```", text, re.S | re.M):
            source = LADDER if ladder and ladder.start() <= block.start() < ladder.end() else doc
            sources += [(source, line) for line in  # a line continued with \ is one command
                        block.group(1).replace("\\\n", " ").splitlines()]
    for script in SCRIPTS:
        doc = (ROOT / script).read_text().split('"""')[1]
        sources += [(script, line) for line in doc.splitlines() if line.strip().startswith("python ")]
    commands = []
    for source, line in sources:
        if line.strip().startswith("#"):
            continue
        commands += [(source, part.strip()) for part in line.split(" #")[0].split("&&") if part.strip()]
    return commands


def is_dry_run(argv):
    return argv[:3] == ["python", "-m", "nanoirl.data"] or any(
        a.startswith("random:") or a.startswith("out/dry-") for a in argv)


def fast_variant(argv, n):
    """(argv to run, how) for a documented command; argv None: skipped, and why. A torchrun
    command runs its script's variant on 2 CPU ranks (gloo), one machine."""
    if argv[0] == "torchrun":
        if "--nnodes" in argv:
            return None, "several machines"
        i = next(i for i, a in enumerate(argv) if a.endswith(".py"))
        inner, how = fast_variant(["python", *argv[i:]], n)
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        return (None, how) if inner is None else ([*launcher, *inner], how + ", 2 ranks")
    if argv[0] in ("pip", "huggingface-cli", "git") or argv[:3] == ["python", "-m", "pytest"] or "--download" in argv:
        return None, "installs, downloads, or is this test suite (CI runs it: tests/test_readme.py)"
    if "=" in argv[0] or any("$" in a for a in argv):
        return None, "names the TL;DR reference models (a shell variable): they need the network"
    if argv[1].endswith(".py") and "--data" not in argv and "--model" in argv and not is_dry_run(argv) \
            and not argv[argv.index("--model") + 1].startswith("toy-"):
        return None, "reads the TL;DR datasets (the default --data on text): tests/test_scripts.py::test_mlirl_on_tldr_by_default"
    if argv[:2] == ["python", "bench.py"]:
        if "--device" in argv and argv[argv.index("--device") + 1] == "cpu":
            return argv[1:], "as written"
        return (argv[1:], "as written") if torch.cuda.is_available() else (None, "bench.py on CUDA")
    if is_dry_run(argv):
        return argv[1:], "as written"
    if argv[:3] == ["python", "-m", "toy.plots"]:  # its own --out stays: relative to the working directory
        out = [] if "--out" in argv else ["--out", f"toy-{n}"]
        return argv[1:] + out + ["--steps", "20", "--demos", "3,12", "--seeds", "1", "--runs-dir", f"toy-{n}/runs"], "fast"
    if argv[:2] == ["python", "sweep_mlirl.py"]:  # the same, with train_mlirl.py's fast settings in every run
        out = [] if "--out" in argv else ["--out", f"toy-{n}"]
        return argv[1:] + out + ["--seeds", "1", "--runs-dir", f"toy-{n}/runs",
                                 "--mlirl-flags", " ".join(FAST["train_mlirl.py"])], "fast"
    script = argv[1]
    assert script in FAST, f"no fast variant for the documented command {' '.join(argv)!r}: add one here"
    model = argv[argv.index("--model") + 1] if "--model" in argv else "toy"
    if model.startswith("pythia-") or model.startswith("out/"):
        return argv[1:] + FAST[script] + TEXT_FAST[script], "fast, tiny cached pythia-1b"
    return argv[1:] + FAST[script] + ["--out", f"toy-{n}"], "fast"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A working directory with the data the Pythia commands name (tldr.jsonl, prefs.jsonl,
    demos.jsonl) and a Hugging Face cache holding a tiny GPT-NeoX as EleutherAI/pythia-1b and
    EleutherAI/pythia-1b-deduped (and as pythia-6.9b, for the FSDP2 command)."""
    from nanoirl import data
    from nanoirl.checkpoint import save_model
    from nanoirl.model import GPT, GPTConfig
    from nanoirl.tokenizer import ByteTokenizer
    tmp = tmp_path_factory.mktemp("commands")
    data.write_jsonl(tmp / "tldr.jsonl", data.fake_tldr(8, seed=1))
    data.write_jsonl(tmp / "prefs.jsonl", data.fake_tldr(8, seed=2, preferences=True))
    data.write_jsonl(tmp / "demos.jsonl", ({"prompt": data.TLDR_PROMPT.format(**r), "response": " " + r["summary"]}
                                           for r in data.fake_tldr(8, seed=3)))  # as nanoirl.generate writes
    for name in ("pythia-1b", "pythia-1b-deduped", "pythia-6.9b"):
        snapshot = tmp / "hf-cache" / f"models--EleutherAI--{name}" / "snapshots" / "abc"
        save_model(GPT(GPTConfig(vocab_size=256, block_size=320, n_layer=1, n_head=2, n_embd=16)), snapshot)
        ByteTokenizer().save(snapshot / "tokenizer.json")
        (snapshot.parents[1] / "refs").mkdir()
        (snapshot.parents[1] / "refs" / "main").write_text("abc")
    return tmp


def test_documented_commands_run(workspace):
    """Each documented command: the text ones in order (the dry runs as written; each one's time is
    printed, not asserted: the suite may share the machine), while the toy's, which depend on
    nothing, run side by side with them (their output goes to files: a pipe nobody reads yet
    could fill and stall them)."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(workspace / "hf-cache"), "PYTHONPATH": str(ROOT),
           "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}  # one thread: fastest on a busy CPU
    commands = documented()
    assert sum(s == "README.md" for s, _ in commands) >= 8
    assert {s for s, _ in commands} >= {"README.md", "docs/operations.md", LADDER, *SCRIPTS}
    planned, skipped = plan(commands)
    for command, how in skipped:
        print(f"skipped ({how}): {command}")
    before = work_tree()
    start = lambda argv: subprocess.Popen([sys.executable, *argv], cwd=workspace, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    logs = workspace / "toy-logs"
    logs.mkdir()
    toy = {}
    for n, (command, (_, argv, how)) in enumerate(planned.items()):
        if how == "fast":
            out, err = open(logs / f"{n}.stdout", "w"), open(logs / f"{n}.stderr", "w")
            toy[command] = subprocess.Popen([sys.executable, *argv], cwd=workspace, env=env, stdout=out, stderr=err), \
                logs / f"{n}.stdout", logs / f"{n}.stderr"
            out.close(), err.close()
    def lane(commands):  # in documented order; returns [(command, failure or None)]
        done = []
        for command, (source, argv, how) in commands:
            t0 = time.time()
            stdout, stderr = (proc := start(argv)).communicate(timeout=600)
            print(f"{time.time() - t0:5.1f} s  {how}: {command}")
            ok = proc.returncode == 0 and "Traceback" not in stderr
            done.append((command, None if ok else f"{source}: {command}\n{stdout[-2000:]}\n{stderr[-2000:]}"))
        return done

    # two lanes side by side, each in documented order: the dry runs (random weights; each needs the
    # one before it) and the commands on the tiny cached Pythia, which share none of their files
    text = [(c, p) for c, p in planned.items() if p[2] != "fast"]
    lanes = [[(c, p) for c, p in text if is_dry_run(shlex.split(c))],
             [(c, p) for c, p in text if not is_dry_run(shlex.split(c))]]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = [r for done in pool.map(lane, lanes) for r in done]
    for command, failure in results:
        assert failure is None, failure
    ran = [command for command, _ in results]
    for command, (proc, stdout, stderr) in toy.items():
        proc.wait(timeout=600)
        stdout, stderr = stdout.read_text(), stderr.read_text()
        print(f"fast: {command}")
        assert proc.returncode == 0 and "Traceback" not in stderr, f"{command}\n{stdout[-2000:]}\n{stderr[-2000:]}"
    assert len(toy) >= 10
    assert (workspace / "figures" / "results.jsonl").is_file()  # README's `--out figures`: the workspace's
    if before is None:
        print("no git repository here: the work-tree check is skipped")
    else:
        changed = sorted(set(work_tree().items()) ^ set(before.items()))
        assert not changed, f"documented commands changed the repository's work tree: {changed}"
    assert any("random:pythia-70m" in c for c in ran) and any("out/dry-sft/policy" in c for c in ran)
    check_dry_run(workspace / "out" / "dry-sft", "train_sft.py", 3)
    check_dry_run(workspace / "out" / "dry-mlirl", "train_mlirl.py", 2)
    dry = workspace / "out" / "dry-sft" / "policy"
    assert (dry / "tokenizer.json").is_file()  # the byte tokens, saved with the policy
    from nanoirl.tokenizer import ByteTokenizer, Tokenizer
    text = "SUBREDDIT: r/tifu\n\nTITLE: é ü 日本\n\nPOST: a  b\n\nTL;DR:"
    assert Tokenizer.from_pretrained(dry).encode(text) == ByteTokenizer().encode(text)


def plan(commands):
    """({command: (source, argv, how)} to run, [(command, why)] skipped), in documented order; a
    command documented twice runs once (the scripts' docstrings repeat the dry run)."""
    planned, skipped = {}, []
    for n, (source, command) in enumerate(commands):
        if source == LADDER:
            argv, how = None, "the guide's teaching ladder: tests/test_docs.py::test_ladder_command_runs"
        else:
            argv, how = fast_variant(shlex.split(command), n)
        if argv is None:
            skipped.append((command, how))
        elif command not in planned:
            planned[command] = source, [str(ROOT / a) if a.endswith(".py") else a for a in argv], how
    return planned, skipped


def work_tree():
    """{line of `git status --porcelain`: sha256 of the file it names} for the repository, or None
    where git or the repository is absent (an exported copy)."""
    if shutil.which("git") is None:
        return None
    done = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=all"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return None
    files = {}
    for line in done.stdout.splitlines():
        path = ROOT / line[3:].split(" -> ")[-1].strip('"')
        files[line] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return files


def test_offline_model_fails_fast_and_names_every_file(tmp_path):
    """--model pythia-1b with no cache and no network: a quick check of the Hub, not ~25 s of
    download retries, and the printed fetch command names every file a model directory needs."""
    env = {"HF_HUB_CACHE": str(tmp_path), "HF_ENDPOINT": "http://127.0.0.1:9", "PYTHONPATH": str(ROOT),
           "PATH": "/usr/bin:/bin"}  # port 9 (discard) refuses at once; HF_HUB_OFFLINE is not set
    code = "from nanoirl.tokenizer import Tokenizer\ntry:\n Tokenizer.from_pretrained('pythia-1b')\nexcept FileNotFoundError as e:\n print(e)"
    t0 = time.time()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert time.time() - t0 < 10, done.stderr
    assert "127.0.0.1 is not reachable" in done.stdout, done.stdout + done.stderr
    assert "huggingface-cli download EleutherAI/pythia-1b config.json model.safetensors tokenizer.json" in done.stdout


def check_dry_run(out, script, n):
    """What tests/test_scripts.py::test_text_dry_run checks of a text run: metrics.jsonl with the
    shared names, ckpt.pt at the last step, policy/ equal to the checkpoint's policy."""
    from test_scripts import TEXT_EVAL, assert_same, metric_names, rows_of
    from nanoirl.checkpoint import load_model
    from nanoirl.model import GPT
    rows = rows_of(out)
    assert len(rows) == n
    for row in rows:
        assert set(row) - {"step"} == metric_names(script, row["step"], n, TEXT_EVAL, eval_every=50)
    ckpt = torch.load(out / "ckpt.pt", weights_only=True, mmap=True)
    assert ckpt["step"] == n
    policy = load_model(GPT, out / "policy")
    assert (policy.config.n_layer, policy.config.n_embd, policy.config.vocab_size) == (6, 512, 50304)
    assert_same(policy.state_dict(), ckpt["state"]["policy"], "policy")
