"""
The toy path and the text path side by side: each script trains the toy's tiny GPT (--model toy-gpt)
and a GPT-NeoX of the same size reading the toy as text (--toy-eval, toy/text.py) on the same
demonstrations, for the same steps, with the same settings; both are evaluated exactly against the
toy's expert. Prints the tables of docs/results.md ("The text path learns what the toy path learns").

    python toy_vs_text.py --seeds 3          # 24 runs, two at a time: ~11 min on 2 cores

For each seed s, into --runs-dir/seed-s/:
  data/      python -m toy.text write data --demos 60 --seed s: the demonstrations that
             `--model toy-gpt --seed s` draws, as text ("0:" -> "abca")
  gpt-neox/  a random GPT-NeoX of the toy GPT's size (2 layers, width 32, 2 heads), its init seeded
             by s, on UTF-8 bytes (a letter is one token, as on the toy), with its tokenizer.json
  train_sft-toy/, train_sft-text/, ...   the runs, each a command as typed (printed first):
             train_sft.py, train_airl.py --divergence reverse-kl --steps 100 and train_mlirl.py,
             with their defaults otherwise; the text run takes the toy GPT's defaults too
             (nanoirl/cli.py: --toy-eval), in float64 as the toy. SFT and AIRL also run on text with
             --toy-tokens-only: the policy masked to the toy's tokens, as the toy GPT is, which
             tells what the 254 other tokens of text change

Each row of the first table is mean ± std over the seeds (toy.metrics.mean_std) of the last
evaluation; "text - toy" pairs the two runs of a seed (same demonstrations), and "within noise" says
whether that difference's mean is within two standard errors of 0. outside_language is the text
policy's mass on token sequences that are not toy responses: its other numbers are those of its
law renormalised on the toy language. The second table holds each run's EOS rate against its seed's
demonstrations' (1 - eos_rate is the mass cut at the horizon).
"""
import argparse
import concurrent.futures
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from nanoirl.checkpoint import save_model
from nanoirl.cli import positive_int
from nanoirl.model import GPT, GPTConfig
from nanoirl.tokenizer import ByteTokenizer
from toy import metrics, text
from toy.gpt import tiny_config
from toy.mdp import ToyMDP

ROOT = Path(__file__).resolve().parent  # where the scripts are: the runs start there
N_DEMOS, HELD_OUT = 60, 3
AIRL = ["--divergence", "reverse-kl", "--steps", "100"]
# (script, its flags on both paths, more flags on the text path only); --toy-tokens-only masks the
# text policy to the toy's tokens, as the toy GPT is masked, and is compared with the same toy runs
COMPARISONS = [("train_sft.py", [], []), ("train_sft.py", [], ["--toy-tokens-only"]), ("train_airl.py", AIRL, []),
               ("train_airl.py", AIRL, ["--toy-tokens-only"]), ("train_mlirl.py", [], [])]
ROWS = ["fkl", "gold_reward", "length", "eos_rate", "outside_support", "disc_accuracy", "outside_language"]
COST = {"train_airl.py": 3, "train_mlirl.py": 2, "train_sft.py": 1}  # longest runs first (text first): the lanes end together


def run_dir(seed_dir, script, path, text_flags=()):
    """seed-s/train_airl-toy, seed-s/train_airl-text, seed-s/train_airl-text-toy-tokens-only, ..."""
    return seed_dir / "-".join([script.removesuffix(".py"), path, *(f.lstrip("-") for f in text_flags)])


def write_seed(directory, seed):
    """The toy as text (data/) and a random GPT-NeoX on bytes (gpt-neox/) for one seed; returns the
    flags that point a script at them."""
    mdp, _ = text.write(directory / "data", N_DEMOS, seed, held_out=HELD_OUT)
    tok = ByteTokenizer()
    cfg = tiny_config(mdp)  # the toy GPT's layers; the vocabulary and positions of text
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=cfg.n_layer, n_head=cfg.n_head,
                              n_embd=cfg.n_embd)).double()
    save_model(model, directory / "gpt-neox")
    tok.save(directory / "gpt-neox" / "tokenizer.json")
    prompt_len = max(len(tok.encode(text.PROMPT.format(x=x))) for x in range(mdp.n_prompts))
    return ["--model", directory / "gpt-neox", "--toy-eval", directory / "data", "--eval-size", HELD_OUT,
            "--max-prompt-len", prompt_len, "--max-response-len", mdp.T, "--dtype", "float64"]


def runs(runs_dir, seeds):
    """[(seed, script, path, out, command)] of every run, longest first."""
    out = {}
    for s in range(1, seeds + 1):
        d = runs_dir / f"seed-{s}"
        toy, text_path = ["--model", "toy-gpt", "--n-demos", N_DEMOS], write_seed(d, s)
        for script, flags, text_flags in COMPARISONS:
            for path, model in (("toy", toy), ("text", [*text_path, *text_flags])):
                run = run_dir(d, script, path, text_flags if path == "text" else ())
                cmd = [sys.executable, script, *model, *flags, "--seed", s, "--device", "cpu", "--out", run, "--force"]
                out[run] = (s, script, path, run, [str(c) for c in cmd])  # a toy run compared twice runs once
    return sorted(out.values(), key=lambda r: (-COST[r[1]], r[2] != "text"))


def last_evaluation(run):
    """The last row of run/metrics.jsonl that holds an evaluation."""
    try:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    except (OSError, ValueError) as e:
        sys.exit(f"error: cannot read the run {run} ({e}); run python toy_vs_text.py without --table-only first")
    return [r for r in rows if "fkl" in r][-1]


def execute(runs_list, jobs):
    """Run every command, `jobs` at a time, each on one thread (tiny models: a second thread per run
    only adds overhead); its output goes to <out>.log. Stops at the first failure."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0, done = time.time(), 0

    def one(r):
        seed, script, path, out, cmd = r
        start = time.time()
        with open(f"{out}.log", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
        return r, rc, time.time() - start

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for r in runs_list:
            print(" ".join(r[4][1:]), flush=True)
        for future in concurrent.futures.as_completed([pool.submit(one, r) for r in runs_list]):
            (seed, script, path, out, _), rc, seconds = future.result()
            if rc != 0:
                pool.shutdown(cancel_futures=True)
                sys.exit(f"error: {script} ({path}, seed {seed}) failed with exit status {rc}; see {out}.log")
            done += 1
            fkl = last_evaluation(out)["fkl"]
            print(f"[{done}/{len(runs_list)}] {out.parent.name}/{out.name}: fkl {fkl:.3f} in {seconds:.0f}s "
                  f"({time.time() - t0:.0f}s so far)", flush=True)


def cell(values):
    mean, std = metrics.mean_std(values)
    return f"{mean:.3f} ± {std:.3f}"


def paired(a, b):
    """(mean ± std of a - b over the seeds, whether that mean is within two standard errors of 0)."""
    diff = [x - y for x, y in zip(a, b)]
    mean, std = metrics.mean_std(diff)
    return cell(diff), "yes" if abs(mean) <= 2 * std / math.sqrt(len(diff)) else "no"


def table(runs_dir, seeds):
    """The two markdown tables of the runs in runs_dir, seeds 1 .. seeds: the paths side by side,
    then each run's EOS rate against its seed's demonstrations'."""
    mdp = ToyMDP()
    demos = [metrics.summary(mdp, mdp.empirical_logprob(*mdp.demonstrations(N_DEMOS, torch.Generator().manual_seed(s))[::2]))
             for s in range(1, seeds + 1)]
    expert = metrics.summary(mdp, mdp.expert_logprob)
    sides = ["| script | metric | toy GPT | GPT-NeoX on text | text - toy | within noise |", "|---|---|---|---|---|---|"]
    eos = ["| run | eos_rate | - the demonstrations' | within noise |", "|---|---|---|---|"]
    for script, flags, text_flags in COMPARISONS:
        name = " ".join([script, *flags] + ([f"(text: {' '.join(text_flags)})"] if text_flags else []))
        got = {p: [last_evaluation(run_dir(runs_dir / f"seed-{s}", script, p, text_flags if p == "text" else ()))
                   for s in range(1, seeds + 1)] for p in ("toy", "text")}
        for key in ROWS:
            toy, on_text = ([r[key] for r in got[p] if key in r] for p in ("toy", "text"))
            if not on_text:  # disc_accuracy: train_airl.py only
                continue
            if not toy:  # outside_language: text only
                sides.append(f"| {name} | {key} | | {cell(on_text)} | | |")
                continue
            sides.append(f"| {name} | {key} | {cell(toy)} | {cell(on_text)} | {' | '.join(paired(on_text, toy))} |")
        for p in ("toy", "text") if not text_flags else ("text",):  # the toy AIRL runs once, listed once
            values = [r["eos_rate"] for r in got[p]]
            eos.append(f"| {name}, {'toy GPT' if p == 'toy' else 'text'} | {cell(values)} | "
                       f"{' | '.join(paired(values, [d['eos_rate'] for d in demos]))} |")
    for key in ("length", "eos_rate"):
        sides.append(f"| the {N_DEMOS} demonstrations | {key} | {cell([d[key] for d in demos])} | | | |")
        sides.append(f"| the expert (exact) | {key} | {expert[key]:.3f} | | | |")
    return "\n".join(sides + [""] + eos)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=positive_int, default=3, help="seeds 1 .. N, each a pair of runs per script")
    parser.add_argument("--runs-dir", default="out/toy-vs-text", type=Path, help="where the data, models and runs go")
    parser.add_argument("--jobs", type=positive_int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--table-only", action="store_true", help="print the table of the runs already in --runs-dir")
    args = parser.parse_args(argv)
    if not args.table_only:  # the runs start in ROOT: their paths are absolute
        execute(runs(args.runs_dir.resolve(), args.seeds), args.jobs)
    result = table(args.runs_dir, args.seeds)
    (args.runs_dir / "table.md").write_text(result + "\n")
    print(result)
    print(f"wrote {args.runs_dir / 'table.md'}")


if __name__ == "__main__":
    main()
