"""
The toy figures, from exact enumeration:

    python -m toy.plots                  # -> out/figures/*.png and out/figures/results.jsonl, < 1 min on 2 CPUs
    python -m toy.plots --figures modes,training   # (a) and (b) only, ~10 s: no (c), no results.jsonl
    python -m toy.plots --figures low_demo --seeds 5    # (c) over 5 demonstration sets, mean ± std, ~2 min
    python -m toy.plots --figures mlirl_fig2 --seeds 5  # MLIRL Fig. 2 redrawn from the runs of sweep_mlirl.py

  modes.png     (a) the expert vs the policy each objective learns in the position-only class
                    pi(y_t | x, t): mass-covering (SFT = forward KL) against mode-seeking (reverse KL)
  training.png  (b) the exact divergences to the expert over training, one line per objective
  low_demo.png  (c) N demonstrations vs the exact divergences to the *true* expert: SFT against the
                    adversarial objectives (which, with N demonstrations, imitate the empirical
                    distribution of the N, as SFT does)
  mlirl_fig2.png  MLIRL Fig. 2 on the toy over seeds, from the metrics.jsonl of the runs of
                    `python train_mlirl.py --seed s` (its defaults) in --runs-dir/seed-s, s = 1 ..
                    --seeds: the mean and the band mean ± std over the seeds (not a default figure)
  mlirl_schemes.png the ML-IRL schemes (SCHEMES: beta, accumulated pairs, fixed reference) with the PPO
                    step on the toy table, from the runs of `train_mlirl.py --model toy-tabular
                    --rounds 8 <flags> --seed s` in --runs-dir/schemes/<flags>/seed-s (not a default figure)
The runs of the last two are made by `python sweep_mlirl.py` (train_mlirl.py over seeds, in one
process), which then draws them with seed_figures below; this module only reads them.
With --seeds N > 1 every table prints mean ± std over the N seeds (toy.metrics.mean_std: sample
std, ddof = 1).
Every adversarial run in (a)-(b) uses the exact optimal discriminator D* (Sun24 Eq. 16) and the
exact policy gradient; (c) uses a tabular discriminator learned from samples, and also D* against
the empirical distribution for GAIL. The numbers are printed as tables and written to results.jsonl.
"""
import argparse
import functools
import json
import time
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from nanoirl.airl import airl_reward
from nanoirl.fdiv import f_reward, fairl_reward
from nanoirl.gail import gail_reward
from nanoirl.cli import int_list, positive_float, positive_int
from toy import metrics
from toy.mdp import ToyMDP
from toy.tabular import TabularPolicy, TabularScalar
from toy.train import train_adversarial_exact, train_adversarial_sampled, train_sft_exact

# label -> (how the policy learns, line style and marker); all from the uniform position-only policy
OBJECTIVES = {
    "SFT (forward KL)": ("sft", None, "-"),
    "AIRL r=h (reverse KL)": ("adv", airl_reward, "-"),
    "GAIL r=-log(1-D) (JS)": ("adv", gail_reward, "-"),
    "GAIL r=log D": ("adv", functools.partial(gail_reward, convention="log D"), ":o"),
    "alpha-IRL a=0.5": ("adv", functools.partial(f_reward, kind="alpha"), "-"),
    "FAIRL r=e^h-1 (= SFT grad)": ("adv", functools.partial(f_reward, kind="fkl"), "--x"),
    "FAIRL r=-h e^h (published)": ("adv", fairl_reward, "-."),
}
# (b)'s lines that lie on or next to another one, said in its legend; markers tell them apart and
# the line beneath is drawn wider: {label: (legend note, the label beneath)}
ON_TOP = {"FAIRL r=e^h-1 (= SFT grad)": ("exactly on SFT's line", "SFT (forward KL)"),
          "GAIL r=log D": ("next to AIRL's line", "AIRL r=h (reverse KL)")}
KEYS = ["fkl", "rkl", "js", "tv", "traj_entropy", "gold_reward", "modes_covered", "outside_support"]
PANELS = [("fkl", "KL(expert || pi)"), ("rkl", "KL(pi || expert)"), ("js", "JS(expert, pi)")]  # (b), (c)
FIGURES = ("modes", "training", "low_demo")  # (a), (b), (c): the PNG names, --figures; panels (a1), (a2), ...
SEED_FIGURES = ("mlirl_fig2", "mlirl_schemes")  # drawn only when named in --figures, from runs of sweep_mlirl.py
FIG2 = [("rm_accuracy_heldout", "held-out reward accuracy"), ("gold_reward", "gold reward (exact)"),
        ("win_rate", "win rate vs demonstrations (exact)")]   # MLIRL Fig. 2 (a), (b), (c)
FIG2_KEYS = ["rm_accuracy_heldout", "gold_reward", "win_rate", "fkl", "fkl_demos", "outside_support"]
# the ML-IRL schemes with the PPO step on the toy table (docs/results.md, "Which ML-IRL scheme converges"):
# train_mlirl.py --model toy-tabular --rounds 8 plus each row's flags (run by sweep_mlirl.py)
SCHEME_BASE = ["--model", "toy-tabular", "--rounds", "8"]
SCHEMES = ["", "--accumulate-pairs", "--fixed-reference", "--beta 0.2", "--beta 0.2 --accumulate-pairs",
           "--beta 0.05", "--beta 0.05 --accumulate-pairs", "--beta 0.05 --fixed-reference --accumulate-pairs"]
SCHEME_ROUNDS = (0, 1, 2, 4, 8)


def mode_profile(mdp, logd):
    """Mass on the policy's largest, 2nd, 3rd expert mode, on the rest of the expert's support
    (the one-letter tail), and outside it; averaged over prompts."""
    modes = metrics.mode_mass(mdp, logd).sort(-1, descending=True).values   # (n_prompts, n_modes)
    support = torch.where(mdp.support, logd.exp(), 0.0).sum(-1)
    return [*modes.mean(0).tolist(), (support - modes.sum(-1)).mean().item(),
            metrics.outside_support(mdp, logd).mean().item()]


def run_objectives(mdp, steps, lr):
    """(a)-(b): every objective with exact D* and exact gradients -> {label: (history, log d)}."""
    out = {}
    for label, (how, reward_fn, _) in OBJECTIVES.items():
        policy = TabularPolicy(mdp, "position")
        if how == "sft":
            history = train_sft_exact(mdp, policy, steps=steps, lr=lr, log_every=10)
        else:
            history = train_adversarial_exact(mdp, policy, reward_fn, steps=steps, lr=lr, log_every=10)
        out[label] = history, mdp.trajectory_logprobs(policy).detach()
    return out


def run_low_demo(mdp, ns, steps, lr, seeds=2):
    """(c): for each N and seed, SFT on N demonstrations and the adversarial objectives against
    the same N; the summaries are averaged over the seeds (different demonstration sets)."""
    rows = []
    for n, seed in [(n, seed) for n in ns for seed in range(seeds)]:
        g = torch.Generator().manual_seed(1000 * seed + n)
        demos = mdp.demonstrations(n, g)
        emp = mdp.empirical_logprob(demos[0], demos[2])
        runs = {
            "SFT": lambda p: train_sft_exact(mdp, p, emp, steps=steps, lr=lr),
            "GAIL, D* vs empirical": lambda p: train_adversarial_exact(
                mdp, p, gail_reward, steps=steps, lr=lr, target_logprob=emp),
            "AIRL, learned D": lambda p: train_adversarial_sampled(
                mdp, p, TabularScalar(mdp), airl_reward, steps=steps, lr=lr, demos=demos, batch=256,
                disc_steps=2, generator=g),
            "GAIL, learned D": lambda p: train_adversarial_sampled(
                mdp, p, TabularScalar(mdp), gail_reward, steps=steps, lr=lr, demos=demos, batch=256,
                disc_steps=2, generator=g),
        }
        for method, train in runs.items():
            policy = TabularPolicy(mdp, "position")
            train(policy)
            s = metrics.summary(mdp, mdp.trajectory_logprobs(policy).detach())
            rows.append({"figure": "low_demo", "n_demos": n, "seed": seed, "method": method, **s})
    return rows


def seed_means(rows):
    """The low_demo rows over seeds: one row per (N, method), each key the mean over the seeds and
    key + "_std" their sample std (metrics.mean_std)."""
    groups = {}
    for r in rows:
        groups.setdefault((r["n_demos"], r["method"]), []).append(r)
    out = []
    for (n, m), g in groups.items():
        stats = metrics.over_seeds([{k: r[k] for k in KEYS} for r in g])
        out.append({"n_demos": n, "method": m, **{k: v[0] for k, v in stats.items()},
                    **{k + "_std": v[1] for k, v in stats.items()}})
    return out


def seed_dir(runs_dir, seed):
    """runs_dir/seed-s: where the run of train_mlirl.py --seed s of a sweep goes."""
    return Path(runs_dir) / f"seed-{seed}"


def scheme_dir(runs_dir, flags):
    """runs_dir/schemes/<flags>: "--beta 0.2 --accumulate-pairs" -> beta_0.2_accumulate-pairs."""
    return Path(runs_dir) / "schemes" / (flags.replace("--", "").replace(" ", "_") or "defaults")


def read_runs(runs_dir, seeds):
    """The per-round metric dicts of runs_dir/seed-s/metrics.jsonl, one list per seed s = 1 .. seeds."""
    runs = []
    for s in range(1, seeds + 1):
        path = seed_dir(runs_dir, s) / "metrics.jsonl"
        if not path.is_file():
            raise SystemExit(f"error: no {path}: the runs come from python sweep_mlirl.py (its --runs-dir and --seeds)")
        runs.append([json.loads(line) for line in path.read_text().splitlines()])
    return runs


def mlirl_seed_rows(runs):
    """Per round: {"round", key: (mean, std) over seeds} for each FIG2_KEYS key the round logged."""
    rows = []
    for k, per_seed in enumerate(zip(*runs)):
        keys = [key for key in FIG2_KEYS if key in per_seed[0]]
        rows.append({"round": k, **metrics.over_seeds([{key: r[key] for key in keys} for r in per_seed])})
    return rows


def plot_modes(mdp, results, path):
    labels = ["expert"] + list(results)
    profiles = [mode_profile(mdp, mdp.expert_logprob)] + [mode_profile(mdp, q) for _, q in results.values()]
    parts = ["largest mode", "2nd mode", "3rd mode", "rest of support", "outside support"]
    colors = ["#1f4e79", "#4f81bd", "#9dc3e6", "#c9c9c9", "#e06666"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5.2), gridspec_kw={"width_ratios": [1.2, 1]})
    bottom = [0.0] * len(labels)
    for k, (part, color) in enumerate(zip(parts, colors)):
        vals = [p[k] for p in profiles]
        ax.barh(labels, vals, left=bottom, color=color, label=part)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability mass (mean over prompts)")
    ax.set_title("(a1) where each objective puts its mass\nposition-only policy class pi(y_t | x, t)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.28), ncol=5, fontsize=8, frameon=False)
    # right: prompt 0's expert modes and each policy's most likely responses, side by side
    shown = ["SFT (forward KL)", "GAIL r=-log(1-D) (JS)", "AIRL r=h (reverse KL)"]
    x = 0
    picks = list(mdp.modes[x])
    for label in shown:
        picks += [j for j in results[label][1][x].argsort(descending=True)[:4].tolist() if j not in picks]
    picks.sort(key=lambda j: -mdp.expert_logprob[x, j].item())
    width = 0.8 / (1 + len(shown))
    for k, (label, logd) in enumerate([("expert", mdp.expert_logprob)] + [(l, results[l][1]) for l in shown]):
        ax2.bar([i + (k - len(shown) / 2) * width for i in range(len(picks))], logd[x, picks].exp(),
                width, label=label, color="k" if label == "expert" else f"C{k - 1}")
    ax2.set_xticks(range(len(picks)))
    ax2.set_xticklabels([mdp.decode(mdp.responses[j]) for j in picks], rotation=60, fontsize=8)
    for tick, j in zip(ax2.get_xticklabels(), picks):
        tick.set_color("k" if j in mdp.modes[x] else ("0.4" if mdp.support[x, j] else "#c00000"))
    ax2.set_ylabel("d(y | x)")
    ax2.set_title("(a2) prompt 0: expert modes (black) and each policy's top\n"
                  "responses (grey: a mode's one-letter tail, red: outside support)", fontsize=10)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training(results, path):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for i, (ax, (key, name)) in enumerate(zip(axes, PANELS)):
        for label, (history, _) in results.items():
            note = f" ({ON_TOP[label][0]})" if label in ON_TOP else ""
            lw = 3.5 if label in {beneath for _, beneath in ON_TOP.values()} else 1.5
            ax.plot([s for s, _ in history], [m[key] for _, m in history], OBJECTIVES[label][2],
                    label=label + note, lw=lw, markevery=3, markersize=5, markerfacecolor="none")
        ax.set_title(f"(b{i + 1}) {name}, exact")
        ax.set_xlabel("policy step")
        ax.set_yscale("log")
    axes[0].legend(fontsize=7.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_mlirl_seeds(rows, runs, path):
    """MLIRL Fig. 2 over seeds: each seed thin, the mean with a band of ± one std."""
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for i, (ax, (key, name)) in enumerate(zip(axes, FIG2)):
        for j, run in enumerate(runs):
            pts = [(r["step"], r[key]) for r in run if key in r]
            ax.plot(*zip(*pts), color="C0", lw=0.7, alpha=0.4, label="one seed" if j == 0 else None)
        rounds = [r["round"] for r in rows if key in r]
        mean = torch.tensor([r[key][0] for r in rows if key in r])
        std = torch.tensor([r[key][1] for r in rows if key in r])
        ax.plot(rounds, mean, "o-", color="C0", lw=2, label=f"mean of {len(runs)} seeds")
        ax.fill_between(rounds, mean - std, mean + std, color="C0", alpha=0.2, label="mean ± std")
        if key != "gold_reward":
            ax.axhline(0.5, color="0.5", ls="--", lw=0.8, label="chance")
        ax.set_title(f"({'abc'[i]}) {name}", fontsize=10)
        ax.set_xlabel("ML-IRL round (0 = SFT)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=8)
    fig.suptitle("MLIRL Fig. 2 on the toy: python train_mlirl.py (tiny GPT, PPO policy step), over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_schemes(schemes, path):
    """KL(demonstrations || pi_k) and the gold reward by round for each scheme: mean of the seeds,
    band mean ± std."""
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.4))
    for i, (flags, runs) in enumerate(schemes.items()):
        rows = mlirl_seed_rows(runs)
        for ax, key in zip(axes, ("fkl_demos", "gold_reward")):
            mean, std = (torch.tensor([r[key][j] for r in rows]) for j in (0, 1))
            ax.plot(range(len(rows)), mean, "o-", ms=3, color=f"C{i}", lw=1.5, label=flags or "(defaults)")
            ax.fill_between(range(len(rows)), mean - std, mean + std, color=f"C{i}", alpha=0.12)
    axes[0].set_yscale("log")
    for ax, title in zip(axes, ("(a) KL(demonstrations || pi_k)", "(b) gold reward (exact)")):
        ax.set_title(title + f", mean ± std over {len(runs)} seeds", fontsize=10)
        ax.set_xlabel("ML-IRL round (0 = SFT)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center right", fontsize=8,
               title="train_mlirl.py --model toy-tabular", title_fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_low_demo(rows, results, path):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    infinite = {"SFT": "SFT (forward KL)", "AIRL, learned D": "AIRL r=h (reverse KL)",
                "GAIL, learned D": "GAIL r=-log(1-D) (JS)"}
    for j, (ax, (key, name)) in enumerate(zip(axes, PANELS)):
        for i, method in enumerate(methods):
            pts = [(r["n_demos"], r[key], r[key + "_std"]) for r in rows if r["method"] == method]
            ns, mean, std = (torch.tensor(v) for v in zip(*pts))
            line, = ax.plot(ns, mean, "o-", label=method, color=f"C{i}")
            if std.max() > 0:  # the band over demonstration sets, mean ± std
                ax.fill_between(ns, mean - std, mean + std, color=line.get_color(), alpha=0.15)
            if method in infinite:  # the same objective with infinitely many demonstrations
                ax.axhline(results[infinite[method]][0][-1][1][key], color=line.get_color(), ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("number of demonstrations N (N/3 per prompt)")
        ax.set_title(f"(c{j + 1}) {name} to the true expert\n(mean ± std over demonstration sets)", fontsize=10)
    axes[0].legend(fontsize=8, title="dotted: same objective, N = infinity", title_fontsize=7.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_list(choices):
    """argparse type of --figures: comma-separated names from choices."""
    def names(value):
        picked = [v.strip() for v in value.split(",") if v.strip()]
        if not picked or any(n not in choices for n in picked):
            raise argparse.ArgumentTypeError(f"{value!r}: use a comma-separated list of {', '.join(choices)}")
        return picked
    return names


def table(rows, first, keys=KEYS):
    """One row per (name, {key: number or (mean, std)}); a (mean, std) cell reads "mean ±std"."""
    cell = lambda v: f"{v[0]:>16.4f} ±{v[1]:<7.4f}" if isinstance(v, tuple) else f"{v:>16.4f}"
    width = 25 if any(isinstance(v, tuple) for _, r in rows for v in r.values()) else 16
    w = max([30] + [len(name) + 2 for name, _ in rows])
    head = f"{first:<{w}}" + "".join(f"{k:>{width}}" for k in keys)
    return "\n".join([head] + [f"{name:<{w}}" + "".join(cell(r[k]) if k in r else f"{'-':>{width}}" for k in keys)
                               for name, r in rows])


def seed_figures(figures, seeds, runs_dir, out):
    """The SEED_FIGURES named in figures, from the runs in runs_dir (sweep_mlirl.py makes them):
    mlirl_fig2 from seed-s/, mlirl_schemes from schemes/<flags>/seed-s/ for s = 1 .. seeds, each
    drawn into out and its table printed (mean ± std over the seeds when seeds > 1)."""
    if "mlirl_fig2" in figures:
        runs = read_runs(runs_dir, seeds)
        rows = mlirl_seed_rows(runs)
        plot_mlirl_seeds(rows, runs, out / "mlirl_fig2.png")
        print(table([(f"round {r['round']}", {k: v if seeds > 1 else v[0] for k, v in r.items() if k != "round"})
                     for r in rows], f"MLIRL Fig. 2, {seeds} seeds", FIG2_KEYS))

    if "mlirl_schemes" in figures:
        schemes = {flags: read_runs(scheme_dir(runs_dir, flags), seeds) for flags in SCHEMES}
        plot_schemes(schemes, out / "mlirl_schemes.png")
        last = len(next(iter(schemes.values()))[0]) - 1
        show = [k for k in SCHEME_ROUNDS if k < last] + [last]
        keys = [f"k={k}" for k in show] + [f"gold k={last}"]
        lines = []
        for flags, runs in schemes.items():
            d = {f"k={k}": [run[k]["fkl_demos"] for run in runs] for k in show}
            d[f"gold k={last}"] = [run[last]["gold_reward"] for run in runs]
            lines.append((flags or "(defaults)", {k: metrics.mean_std(v) if seeds > 1 else v[0] for k, v in d.items()}))
        print(table(lines, f"ML-IRL schemes, PPO step, toy table: KL(demonstrations || pi_k), {seeds} seeds", keys))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/figures",
                        help="folder for the PNGs and results.jsonl (the committed ones: --out figures, README)")
    parser.add_argument("--steps", type=positive_int, default=300, help="policy steps per run")
    parser.add_argument("--lr", type=positive_float, default=0.1, help="Adam learning rate of the policy")
    parser.add_argument("--demos", type=int_list(positive_int, 3), default="3,12,48,192,768",
                        help="N values for (c), multiples of 3 (N / 3 per prompt)")
    parser.add_argument("--seeds", type=positive_int, default=2,
                        help="seeds: demonstration sets (and learned-discriminator samples) per N in (c); "
                             "the train_mlirl.py runs, --seed 1 .. N, that mlirl_fig2 reads; N > 1 prints mean ± std")
    parser.add_argument("--runs-dir", default="out/mlirl-seeds",
                        help="mlirl_fig2, mlirl_schemes: where the runs of sweep_mlirl.py are (seed-s/, schemes/<flags>/seed-s/)")
    parser.add_argument("--figures", default=",".join(FIGURES), type=figure_list(FIGURES + SEED_FIGURES),
                        help="which figures to draw, comma-separated, from " + ",".join(FIGURES + SEED_FIGURES) +
                             "; results.jsonl is written only when the first three are drawn")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: one thread is the fastest
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    mdp = ToyMDP()
    seed_figures(args.figures, args.seeds, args.runs_dir, out)  # first: stops at once if a run is missing

    if set(args.figures) & set(FIGURES):  # (a)-(b): exact and deterministic (no demonstrations, no seed)
        results = run_objectives(mdp, args.steps, args.lr)  # (c) draws their N = infinity lines too
        if "modes" in args.figures:
            plot_modes(mdp, results, out / "modes.png")
        if "training" in args.figures:
            plot_training(results, out / "training.png")
        final = [(label, history[-1][1]) for label, (history, _) in results.items()]
        print(table([("expert", metrics.summary(mdp, mdp.expert_logprob))] + final, "(a) position-only class"))
        print("mode masses (largest, 2nd, 3rd, rest of support, outside), mean over prompts:")
        for label, (_, q) in results.items():
            print(f"  {label:<30}" + " ".join(f"{v:.3f}" for v in mode_profile(mdp, q)))

    if "low_demo" in args.figures:
        low = run_low_demo(mdp, args.demos, steps=150, lr=args.lr, seeds=args.seeds)
        plot_low_demo(seed_means(low), results, out / "low_demo.png")
        rows = [(f"N={r['n_demos']:<5} {r['method']}", {k: (r[k], r[k + "_std"]) if args.seeds > 1 else r[k] for k in KEYS})
                for r in seed_means(low)]
        print(table(rows, f"(c) mean{' ± std' if args.seeds > 1 else ''} of {args.seeds} demo sets"))

    written = [f"{name}.png" for name in FIGURES + SEED_FIGURES if name in args.figures]
    if set(FIGURES) <= set(args.figures):  # a partial run never overwrites the full run's numbers
        with open(out / "results.jsonl", "w") as f:
            for label, (history, q) in results.items():
                for step, s in history:
                    f.write(json.dumps({"figure": "training", "objective": label, "step": step, **s}) + "\n")
                f.write(json.dumps({"figure": "modes", "objective": label, "mode_profile": mode_profile(mdp, q)}) + "\n")
            for r in low:
                f.write(json.dumps(r) + "\n")
        written.append("results.jsonl")
    print(f"wrote {out}/{', '.join(written)} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
