"""
The seed sweeps of the toy's tables and figures (`--seeds N` of python -m toy.irl, toy.plots and
sweep_mlirl.py), on tiny sizes: every "mean ± std" they print is numpy's mean and sample std
(ddof = 1) of the per-seed numbers, computed here from single-seed runs, and a run inside a sweep
gives exactly the numbers of the same run alone (train_mlirl.py in a fresh process: byte-identical
metrics).
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sweep_mlirl
from toy import irl, metrics, plots
from toy.mdp import ToyMDP

ROOT = Path(__file__).resolve().parents[1]
CELL = re.compile(r"(-?\d+\.\d+) ±\s*(\d+\.\d+)")
MLIRL_FAST = ["--rounds", "1", "--sft-steps", "3", "--ppo-iterations", "1", "--rollout-batch-size", "16",
              "--rm-epochs", "1"]


def test_mean_std_is_numpys():
    values = [0.3, -1.25, 2.0, 7.5]
    assert np.allclose(metrics.mean_std(values), (np.mean(values), np.std(values, ddof=1)), atol=1e-15)
    assert metrics.mean_std([4.0]) == (4.0, 0.0)


@pytest.mark.slow
def test_irl_seeds_print_mean_and_std_of_the_single_seed_tables(monkeypatch, capsys):
    """python -m toy.irl --table bon --classes position --seeds 2: each row is the mean ± std of
    best_of_n_table with seeds 0 and 1, the numbers a single-seed run of each gives."""
    monkeypatch.setattr(sys, "argv", ["toy.irl", "--table", "bon", "--classes", "position", "--seeds", "2"])
    irl.main()
    printed = {line[2:48].strip(): [tuple(map(float, c)) for c in CELL.findall(line)]  # toy.irl._row's layout
               for line in capsys.readouterr().out.splitlines() if CELL.search(line)}
    mdp = ToyMDP()
    per_seed = [irl.best_of_n_table(mdp, "position", seed=s) for s in (0, 1)]
    assert len(printed) == len(per_seed[0]) == 8
    for name in per_seed[0]:
        v = np.array([t[name] for t in per_seed])                      # (seeds, N values)
        want = np.stack([v.mean(0), v.std(0, ddof=1)], 1)
        assert np.abs(np.array(printed[name]) - want).max() < 6e-5, name  # printed to 4 decimals
    assert np.abs(np.diff(np.array([t["init-demo"] for t in per_seed]), axis=0)).max() > 1e-3  # the seeds differ


def test_low_demo_seed_means_are_numpys():
    mdp = ToyMDP()
    rows = plots.run_low_demo(mdp, [3, 12], steps=5, lr=0.1, seeds=3)
    for r in plots.seed_means(rows):
        per_seed = [x["fkl"] for x in rows if (x["n_demos"], x["method"]) == (r["n_demos"], r["method"])]
        assert len(per_seed) == 3 and np.std(per_seed) > 0
        assert abs(r["fkl"] - np.mean(per_seed)) < 1e-12 and abs(r["fkl_std"] - np.std(per_seed, ddof=1)) < 1e-12


@pytest.mark.slow
def test_mlirl_fig2_over_seeds(tmp_path, monkeypatch, capsys):
    """python sweep_mlirl.py --figures mlirl_fig2 --seeds 2 (train_mlirl.py with tiny settings): the
    figure is drawn, the printed table is numpy's mean ± std over the two runs' metrics.jsonl, and
    the second run, made in the same process after the first, is byte for byte what
    train_mlirl.py --seed 2 writes in a fresh process (its per-run plots skipped, NANOIRL_NO_PLOTS
    of conftest.py: they change no number)."""
    monkeypatch.setattr(sys, "argv", ["sweep_mlirl.py", "--figures", "mlirl_fig2", "--seeds", "2", "--out", str(tmp_path),
                                      "--runs-dir", str(tmp_path / "runs"), "--mlirl-flags", " ".join(MLIRL_FAST)])
    sweep_mlirl.main()
    assert (tmp_path / "mlirl_fig2.png").is_file()
    out = capsys.readouterr().out
    runs = [[json.loads(l) for l in (tmp_path / "runs" / f"seed-{s}" / "metrics.jsonl").read_text().splitlines()]
            for s in (1, 2)]
    for k in (0, 1):
        line = next(l for l in out.splitlines() if l.startswith(f"round {k} ") and CELL.search(l))
        cells = [tuple(map(float, c)) for c in CELL.findall(line)]
        keys = [key for key in plots.FIG2_KEYS if key in runs[0][k]]
        assert len(cells) == len(keys) == (5 if k == 0 else 6)
        for key, (mean, std) in zip(keys, cells):
            v = [r[k][key] for r in runs]
            assert abs(mean - np.mean(v)) < 6e-5 and abs(std - np.std(v, ddof=1)) < 6e-5, (k, key)
    assert runs[0][1]["gold_reward"] != runs[1][1]["gold_reward"]
    alone = tmp_path / "alone"
    subprocess.run([sys.executable, "train_mlirl.py", "--seed", "2", "--out", str(alone), *MLIRL_FAST],
                   cwd=ROOT, check=True, capture_output=True, timeout=120)
    assert (alone / "metrics.jsonl").read_bytes() == (tmp_path / "runs" / "seed-2" / "metrics.jsonl").read_bytes()


def test_mlirl_schemes_over_seeds(tmp_path, monkeypatch, capsys):
    """python sweep_mlirl.py --figures mlirl_schemes --seeds 2 (tiny settings): each of the 8 schemes
    runs train_mlirl.py on the toy table with its own flags (config.json says so), the figure is
    drawn, and each printed cell is numpy's mean ± std of the two seeds' KL(demonstrations || pi_k)."""
    fast = MLIRL_FAST + ["--ppo-iterations", "2"]
    monkeypatch.setattr(sys, "argv", ["sweep_mlirl.py", "--figures", "mlirl_schemes", "--seeds", "2", "--out", str(tmp_path),
                                      "--runs-dir", str(tmp_path / "runs"), "--mlirl-flags", " ".join(fast)])
    sweep_mlirl.main()
    assert (tmp_path / "mlirl_schemes.png").is_file()
    out = capsys.readouterr().out.splitlines()
    for flags in plots.SCHEMES:
        d = plots.scheme_dir(tmp_path / "runs", flags)
        cfg = [json.loads((d / f"seed-{s}" / "config.json").read_text()) for s in (1, 2)]
        beta = float(flags.split()[1]) if flags.startswith("--beta") else 1.0
        assert cfg[0]["model"] == "toy-tabular" and cfg[0]["beta"] == beta and cfg[1]["seed"] == 2
        assert cfg[0]["accumulate_pairs"] == ("accumulate" in flags) and cfg[0]["fixed_reference"] == ("fixed" in flags)
        runs = [[json.loads(l) for l in (d / f"seed-{s}" / "metrics.jsonl").read_text().splitlines()] for s in (1, 2)]
        line = next(l for l in out if l.startswith((flags or "(defaults)") + " "))
        cells = [tuple(map(float, c)) for c in CELL.findall(line)]
        want = [[r[k]["fkl_demos"] for r in runs] for k in (0, 1)] + [[r[1]["gold_reward"] for r in runs]]
        assert len(cells) == 3, line
        for (mean, std), v in zip(cells, want):
            assert abs(mean - np.mean(v)) < 6e-5 and abs(std - np.std(v, ddof=1)) < 6e-5, (flags, line)


def test_a_shared_reward_reaches_held_out_prompts_only_from_a_blind_start():
    """toy.irl.heldout_lines (python -m toy.irl --table heldout), exact: with one expert shared by
    all prompts and demonstrations on half of them, SFT of a per-prompt table leaves the held-out
    half uniform. ML-IRL's Bradley-Terry reward, one number per response shared by all prompts, is
    the residual log(p_demo / pi_k) + c of the training prompts: from SFT (= the empirical law
    there) it is constant and the held-out prompts stay uniform; from the uniform policy it is
    log p_pooled + c and every prompt lands on the pooled empirical law, SFT's optimum in a
    prompt-blind class, as does MaxEnt IRL (Eq. 10) with the uniform reference."""
    rows = dict(irl.heldout_lines(seed=1, rounds=2)[1:])
    uniform, sft, pooled = rows["uniform policy"], rows["SFT (per-prompt table)"], rows["SFT in a prompt-blind class (pooled)"]
    assert abs(sft["tv_heldout"] - uniform["tv_heldout"]) < 1e-12 and sft["gold_heldout"] < -9
    assert abs(rows["ML-IRL shared reward, from SFT"]["tv_heldout"] - uniform["tv_heldout"]) < 1e-6
    for name in ("ML-IRL shared reward, from uniform", "MaxEnt IRL shared reward, ref uniform"):
        for key in ("gold_train", "gold_heldout", "tv_train", "tv_heldout"):
            assert abs(rows[name][key] - pooled[key]) < 1e-4, (name, key)
    assert pooled["gold_heldout"] > sft["gold_heldout"] + 5


@pytest.mark.slow
def test_heldout_ppo_rows_are_seeded_and_are_not_the_exact_rows():
    """heldout_lines(ppo_iterations=2): the PPO-step rows (the same shared reward fits, PPO in
    place of the exact step, rollouts on all six prompts) give the same numbers when run again
    with the same seed, and differ from the exact rows they replace: 2 updates from uniform are
    far from the pooled law that the exact step lands on."""
    a, b = (dict(irl.heldout_lines(seed=1, rounds=1, ppo_iterations=2)[1:]) for _ in range(2))
    names = ("ML-IRL shared reward, PPO step, from SFT", "ML-IRL shared reward, PPO step, from uniform")
    for name in names:
        assert a[name] == b[name], name
    exact = a["ML-IRL shared reward, from uniform"]
    assert abs(a[names[1]]["tv_heldout"] - exact["tv_heldout"]) > 0.1
    assert a[names[1]]["gold_heldout"] < exact["gold_heldout"] - 0.5
