"""nanoirl/generate.py: demonstrations from a policy, resumable exactly after SIGKILL, readable as
--data by train_sft.py, and scored by a gold reward model. Subprocesses on the CPU, offline."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from nanoirl import data
from nanoirl.model import GPT, GPTConfig, ScalarGPT
from test_scripts import byte_level_tokenizer_json

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def generate(tmp, out, *flags, n=3000):
    argv = [sys.executable, "-m", "nanoirl.generate", "--model", tmp / "tiny", "--data", tmp / "prompts.jsonl",
            "--n", n, "--batch-size", 3, "--out", out, "--device", "cpu", "--max-prompt-len", 16,
            "--max-response-len", 12, *flags]
    return subprocess.Popen(list(map(str, argv)), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_generate_resumes_exactly_after_sigkill_and_trains_sft(tmp_path):
    torch.manual_seed(0)  # vocab 245: every id is a byte of the byte-level tokenizer
    GPT(GPTConfig(vocab_size=245, block_size=96, n_layer=1, n_head=2, n_embd=16)).save_pretrained(tmp_path / "tiny")
    byte_level_tokenizer_json(tmp_path / "tiny" / "tokenizer.json")
    data.write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"question {i}:", "response": f" answer {i}"}
                                                  for i in range(3000)])
    whole, cut = tmp_path / "whole.jsonl", tmp_path / "cut.jsonl"
    uninterrupted, killed = generate(tmp_path, whole), generate(tmp_path, cut)
    while not cut.exists() or cut.read_bytes().count(b"\n") < 300:  # well inside the run
        assert killed.poll() is None, killed.communicate()
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    raw = cut.read_bytes()
    assert 300 <= raw.count(b"\n") < 3000
    raw = raw[:raw.rstrip(b"\n").rfind(b"\n") + 1]  # one line less: most likely inside a batch now
    cut.write_bytes(raw + b'{"prompt": "quest')  # and as if killed in the middle of writing a line
    lines = raw.count(b"\n")
    resumed = generate(tmp_path, cut)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    progress = [line for line in out.splitlines() if line.startswith("generate ")]
    assert progress[0].startswith(f"generate {lines // 3 * 3 + 3}/3000 |")  # went on from the cut
    assert uninterrupted.wait(300) == 0
    assert cut.read_bytes() == whole.read_bytes()
    rows = [json.loads(line) for line in whole.read_text().splitlines()]
    assert len(rows) == 3000 and rows[7]["prompt"] == "question 7:" and all(r["response"] for r in rows)
    # the demonstrations train train_sft.py (byte tokens: 12 sampled bytes may decode to up to 36)
    sft = subprocess.run(list(map(str, [
        sys.executable, "train_sft.py", "--model", tmp_path / "tiny", "--data", whole, "--max-prompt-len", 16,
        "--max-response-len", 48, "--steps", 2, "--batch-size", 4, "--eval-size", 2, "--device", "cpu",
        "--out", tmp_path / "sft"])),
                         cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert sft.returncode == 0, sft.stderr
    assert (tmp_path / "sft" / "policy" / "model.safetensors").is_file()
    # a gold reward model scores each sample and the data's response; the summary is their mean
    torch.manual_seed(1)
    ScalarGPT(GPTConfig(vocab_size=245, block_size=96, n_layer=1, n_head=2, n_embd=16)).save_pretrained(tmp_path / "rm")
    scored = generate(tmp_path, tmp_path / "scored.jsonl", "--gold-model", tmp_path / "rm", n=9)
    out, err = scored.communicate(timeout=300)
    assert scored.returncode == 0, err
    rows = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert all(r["win"] == (r["gold_reward"] > r["gold_reward_data"]) for r in rows)
    win = sum(r["win"] for r in rows) / 9
    assert out.splitlines()[-1].endswith(f"win_rate {win:.4g}")
