"""nanoirl/generate.py: demonstrations from a policy, resumable exactly after SIGKILL, readable as
--data by train_sft.py, and scored by a gold reward model (subprocesses on the CPU, offline); its
bad --out, full disk and Ctrl-C (in-process); pad never sampled."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nanoirl import data
from nanoirl import generate as gen
from nanoirl.checkpoint import save_model
from nanoirl.model import GPT, GPTConfig, ScalarGPT
from nanoirl.policy import pad_after_eos
from nanoirl.cli import RunError
from test_data import FullDisk
from test_scripts import InProcess, byte_level_tokenizer_json

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def generate(tmp, out, *flags, n=1200):
    argv = [sys.executable, "-m", "nanoirl.generate", "--model", tmp / "tiny", "--data", tmp / "prompts.jsonl",
            "--n", n, "--batch-size", 3, "--out", out, "--device", "cpu", "--max-prompt-len", 16,
            "--max-response-len", 12, *flags]
    return subprocess.Popen(list(map(str, argv)), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_generate_resumes_exactly_after_sigkill_and_trains_sft(tmp_path):
    torch.manual_seed(0)  # vocab 245: every id is a byte of the byte-level tokenizer
    save_model(GPT(GPTConfig(vocab_size=245, block_size=96, n_layer=1, n_head=2, n_embd=16)), tmp_path / "tiny")
    byte_level_tokenizer_json(tmp_path / "tiny" / "tokenizer.json")
    data.write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"question {i}:", "response": f" answer {i}"}
                                                  for i in range(1200)])
    whole, cut = tmp_path / "whole.jsonl", tmp_path / "cut.jsonl"
    uninterrupted, killed = generate(tmp_path, whole), generate(tmp_path, cut)
    while not cut.exists() or cut.read_bytes().count(b"\n") < 120:  # well inside the run
        assert killed.poll() is None, killed.communicate()
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    raw = cut.read_bytes()
    assert 120 <= raw.count(b"\n") < 1200
    raw = raw[:raw.rstrip(b"\n").rfind(b"\n") + 1]  # one line less: most likely inside a batch now
    cut.write_bytes(raw + b'{"prompt": "quest')  # and as if killed in the middle of writing a line
    lines = raw.count(b"\n")
    resumed = generate(tmp_path, cut)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    progress = [line for line in out.splitlines() if line.startswith("generate ")]
    assert progress[0].startswith(f"generate {lines // 3 * 3 + 3}/1200 |")  # went on from the cut
    assert uninterrupted.wait(300) == 0
    assert cut.read_bytes() == whole.read_bytes()
    rows = [json.loads(line) for line in whole.read_text().splitlines()]
    assert len(rows) == 1200 and rows[7]["prompt"] == "question 7:" and all(r["response"] for r in rows)
    # the demonstrations train train_sft.py (byte tokens: 12 sampled bytes may decode to up to 36)
    sft = InProcess(tmp_path, "sft", "train_sft.py", "--model", tmp_path / "tiny", "--data", whole,
                    "--max-prompt-len", 16, "--max-response-len", 48, "--steps", 2, "--batch-size", 4,
                    "--eval-size", 2, "--device", "cpu")
    assert sft.returncode == 0, sft.stderr
    assert (tmp_path / "sft" / "policy" / "model.safetensors").is_file()
    # a gold reward model scores each sample and the data's response; the summary is their mean
    torch.manual_seed(1)
    save_model(ScalarGPT(GPTConfig(vocab_size=245, block_size=96, n_layer=1, n_head=2, n_embd=16)), tmp_path / "rm")
    scored = generate(tmp_path, tmp_path / "scored.jsonl", "--gold-model", tmp_path / "rm", n=9)
    out, err = scored.communicate(timeout=300)
    assert scored.returncode == 0, err
    rows = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert all(r["win"] == (r["gold_reward"] > r["gold_reward_data"]) for r in rows)
    win = sum(r["win"] for r in rows) / 9
    assert out.splitlines()[-1].endswith(f"win_rate {win:.4g}")


# ---- bad input and faults, in-process (each about a second) -----------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 1-layer GPT on byte tokens and 8 prompts: a whole generate run takes a fraction of a second."""
    tmp = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    save_model(GPT(GPTConfig(vocab_size=245, block_size=32, n_layer=1, n_head=2, n_embd=16)), tmp / "tiny")
    byte_level_tokenizer_json(tmp / "tiny" / "tokenizer.json")
    data.write_jsonl(tmp / "prompts.jsonl", [{"prompt": f"q {i}:", "response": f" a {i}"} for i in range(8)])
    return tmp


def run_generate(tiny, out, *flags, n=5):
    argv = ["--model", tiny / "tiny", "--data", tiny / "prompts.jsonl", "--n", n, "--batch-size", 3,
            "--out", out, "--device", "cpu", "--max-prompt-len", 8, "--max-response-len", 6, *flags]
    gen.main(gen.parser.parse_args(list(map(str, argv))))


def files(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def refused(tiny, out, *flags):
    """The one-line RunError (the scripts' hook prints it as 'error: ...', exit 1)."""
    with pytest.raises(RunError) as e:
        run_generate(tiny, out, *flags)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_generate_refuses_an_out_it_did_not_write(tiny, tmp_path):
    """A user's JSONL as --out (its last line unterminated) is refused and left byte for byte;
    --force overwrites it. (It used to be cut, appended to, then KeyError 'eos'.)"""
    out = tmp_path / "mine.jsonl"
    out.write_bytes(b'{"prompt": "p", "response": "r"}\n{"prompt": "cut')
    before = files(tmp_path)
    assert refused(tiny, out) == (f"--out {out} exists and was not written by nanoirl.generate (no mine.jsonl.config.json "
                                  "beside it); use another --out, or --force to overwrite it")
    assert files(tmp_path) == before
    run_generate(tiny, out, "--force")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and all(r.keys() == {"prompt", "response", "eos"} for r in rows)


def test_generate_rerun_of_a_finished_file_changes_nothing(tiny, tmp_path, capsys):
    """--n 5 at --batch-size 3: the rerun of a finished file prints its summary and leaves the
    bytes (it used to end in ZeroDivisionError)."""
    out = tmp_path / "demos.jsonl"
    run_generate(tiny, out)
    before = files(tmp_path)
    capsys.readouterr()
    run_generate(tiny, out)
    assert files(tmp_path) == before
    assert capsys.readouterr().out.startswith(f"5 demonstrations in {out}; ")


def test_generate_bad_outs_are_one_line(tiny, tmp_path):
    """A directory, a missing parent, a damaged flags file, a damaged middle line: one line each,
    nothing written or changed (each used to be a traceback)."""
    again = "use another --out, or --force to overwrite it"
    assert refused(tiny, tmp_path) == f"--out {tmp_path} is a directory; give the path of a JSONL file"
    assert refused(tiny, tmp_path / "no" / "d.jsonl") == f"--out {tmp_path / 'no' / 'd.jsonl'}: no such directory {tmp_path / 'no'}"
    assert refused(tiny, tmp_path / "no" / "d.jsonl", "--force").endswith("no such directory " + str(tmp_path / "no"))
    assert list(tmp_path.iterdir()) == []
    out, meta = tmp_path / "d.jsonl", tmp_path / "d.jsonl.config.json"
    run_generate(tiny, out)
    lines = out.read_bytes().splitlines(keepends=True)
    meta_bytes = meta.read_bytes()
    meta.write_bytes(meta_bytes[:-9])  # cut: damaged JSON
    before = files(tmp_path)
    assert refused(tiny, out) == f"{meta}: damaged (Expecting value); {again}"
    assert files(tmp_path) == before
    meta.write_bytes(meta_bytes)
    out.write_bytes(b"".join(lines[:2] + [b'{"prompt": "q 2:", "resp\n'] + lines[3:]))
    before = files(tmp_path)
    assert refused(tiny, out) == f"{out}:3: damaged (Unterminated string starting at); {again}"
    out.write_bytes(b"".join(lines[:2] + [b'{"prompt": "q 2:"}\n'] + lines[3:]))
    assert refused(tiny, out) == f"{out}:3: not a line of nanoirl.generate; {again}"
    out.write_bytes(before["d.jsonl"])
    assert files(tmp_path) == before


def test_generate_refuses_a_temperature_that_is_zero_in_fp32(tiny, tmp_path):
    """--temperature 1e-45 is > 0, and 0 in fp32: refused in one line before anything is written,
    as the training scripts refuse it; 0 itself samples greedily."""
    out = tmp_path / "d.jsonl"
    assert refused(tiny, out, "--temperature", "1e-45").startswith("--temperature 1e-45 is below 0.01")
    assert list(tmp_path.iterdir()) == []
    run_generate(tiny, out, "--temperature", 0)
    assert len(out.read_text().splitlines()) == 5


def test_generate_full_disk_keeps_whole_lines_and_the_rerun_ends_as_an_uninterrupted_run(tiny, tmp_path, monkeypatch):
    """ENOSPC in the middle of batch 2: one line naming what is kept, the file cut back to batch
    1's whole lines (it used to keep a cut line and a traceback); the rerun ends with the bytes
    of an uninterrupted run."""
    whole, out = tmp_path / "whole.jsonl", tmp_path / "out.jsonl"
    run_generate(tiny, whole, n=8)
    monkeypatch.setattr(gen, "open", FullDisk(len(whole.read_bytes().splitlines(keepends=True)[0]) * 4), raising=False)
    with pytest.raises(RunError) as e:
        run_generate(tiny, out, n=8)
    assert str(e.value) == (f"cannot write {out}: no space left on the device; {out} holds 3 of 8 demonstrations, "
                            "whole lines: run the same command again to continue")
    assert out.read_bytes() == b"".join(whole.read_bytes().splitlines(keepends=True)[:3])
    monkeypatch.undo()
    run_generate(tiny, out, n=8)
    assert out.read_bytes() == whole.read_bytes()


def test_generate_ctrl_c_says_what_it_kept(tiny, tmp_path, monkeypatch, capsys):
    """Ctrl-C in batch 2: 'interrupted; ... holds 3 of 8 ... run the same command again', exit 130
    (it used to say 'nothing to resume'), and the rerun continues to the uninterrupted bytes."""
    whole, out = tmp_path / "whole.jsonl", tmp_path / "out.jsonl"
    run_generate(tiny, whole, n=8)
    sample, calls = GPT.sample, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return sample(self, *args, **kwargs)
    monkeypatch.setattr(GPT, "sample", interrupted)
    with pytest.raises(SystemExit) as e:
        run_generate(tiny, out, n=8)
    assert e.value.code == 130
    assert capsys.readouterr().err == (f"error: interrupted; {out} holds 3 of 8 demonstrations, whole lines: "
                                       "run the same command again to continue\n")
    monkeypatch.undo()
    run_generate(tiny, out, n=8)
    assert out.read_bytes() == whole.read_bytes()


@pytest.mark.parametrize("entry", [["-m", "nanoirl.generate"], ["-m", "nanoirl.data"], ["train_sft.py"]],
                         ids=["generate", "data", "train_sft"])
def test_ctrl_c_while_importing_is_one_line(entry):
    """SIGINT while torch is still being imported: one line, no traceback (SIGINT's exit status).
    Every entry point imports nanoirl/entry.py first; train_sft.py stands for the three scripts
    (they printed a traceback)."""
    proc = subprocess.Popen([sys.executable, *entry, "--help"], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.time() + 60
    while "libtorch" not in maps.read_text() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)  # until torch's library is mapped: `import torch` is under way, the hook set before it
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGINT and err == "error: interrupted while starting; nothing was written\n"


def test_pad_is_never_sampled_even_as_the_largest_logit():
    """Pad (id 1) given the largest logit by far: sampled at any temperature, with top-k or top-p,
    or greedily, a response holds pad only after its EOS (nanoirl.generate used to drop such pads
    silently). The toy's policies never see pad: it is not one of the MDP's actions."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=16, block_size=16, n_layer=1, n_head=2, n_embd=8)).eval()
    head, bonus = model.head, torch.zeros(16).index_fill(0, torch.tensor([1]), 100.0)
    model.head = lambda h: head(h) + bonus  # pad's logit: the largest by 100 everywhere
    x = torch.randint(2, 16, (64, 4))
    for kw in [dict(temperature=1.0), dict(temperature=0.7, top_k=3), dict(temperature=1.0, top_p=0.9),
               dict(temperature=0), dict(temperature=1.0, min_new_tokens=3)]:
        y, _ = model.sample(x, torch.ones_like(x, dtype=torch.bool), 8, 0, 1, generator=torch.Generator().manual_seed(0), **kw)
        assert torch.equal(y, pad_after_eos(y.masked_fill(y == 1, 5), 0, 1)), kw  # pad only after EOS
    from toy.mdp import ToyMDP
    from toy.tabular import TabularPolicy
    mdp = ToyMDP()
    table = TabularPolicy(mdp)
    with torch.no_grad():
        table.logits[:, mdp.pad_id] = 50.0
    p, m = mdp.prompt_tokens(torch.arange(mdp.n_prompts))
    y, _ = table.sample(p, m, mdp.T, mdp.eos_id, mdp.pad_id, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, pad_after_eos(y.masked_fill(y == mdp.pad_id, 2), mdp.eos_id, mdp.pad_id))
