"""
The metrics of a run: one line per step in metrics.jsonl ({"step": s, "<metric>": value, ...},
the same names in every script), a printed line every --log-every steps, the NaN guard, and
metrics.png, one small panel per metric drawn from metrics.jsonl.

    log = logger.Logger(out, args.steps, start, args.log_every)
    logger.check_finite(metrics, step, out)  # before it is logged or checkpointed
    log(step, metrics)
    logger.plot_metrics(out)
"""
import contextlib
import json
import math
import os
import time
from pathlib import Path

from nanoirl import dist
from nanoirl.cli import RunError
from nanoirl.resume import METRICS, last_good, truncate_metrics, write_error

PLOT = "metrics.png"


def number(v):
    return v.item() if hasattr(v, "item") else v  # 0-d tensors and numpy scalars -> Python


def check_finite(metrics, step, out):
    """Stop the run on a NaN or inf metric, before it is logged or checkpointed."""
    for name, v in metrics.items():
        v = number(v)
        if isinstance(v, float) and not math.isfinite(v):
            raise RunError(f"{name} is {v} at step {step}; {last_good(out)}")


def append_line(fd, line, path):
    """Append one whole line to the file open as fd (O_APPEND), or nothing: a write cut by a full
    disk is truncated away, so metrics.jsonl holds only whole lines, and the run stops in one line."""
    size = os.fstat(fd).st_size
    try:
        while line:
            line = line[os.write(fd, line):]
    except OSError as e:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise write_error(path, e, path.parent) from None


class Logger:
    """log(step, metrics): appends {"step", **metrics} to out/metrics.jsonl (written through at
    every line, so a kill loses nothing logged; whole lines only: append_line) and prints
    'step s/total | elapsed | eta | name value ...' every `every` steps. A resumed run (start > 0)
    first drops the lines the checkpoint does not cover, so that the file ends equal to that of an
    uninterrupted run."""
    def __init__(self, out, total, start=0, every=1):
        self.path, self.total, self.start, self.every = Path(out) / METRICS, total, start, every
        self.t0 = time.time()
        if dist.is_main():  # under torchrun rank 0 logs; every rank holds the same global metrics
            truncate_metrics(self.path, start, out)
            try:
                self.file = open(self.path, "ab", buffering=0)  # unbuffered: append_line writes its fd
            except OSError as e:  # e.g. metrics.jsonl is a directory
                raise RunError(f"cannot write {self.path}: {e.strerror}; {last_good(out)}") from None

    def __call__(self, step, metrics):
        if not dist.is_main():
            return
        row = {"step": step, **{k: number(v) for k, v in metrics.items()}}
        append_line(self.file.fileno(), (json.dumps(row) + "\n").encode(), self.path)
        if step % self.every == 0 or step + 1 == self.total:
            elapsed = time.time() - self.t0
            eta = elapsed / (step + 1 - self.start) * (self.total - step - 1)
            values = " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in row.items() if k != "step")
            hms = lambda s: time.strftime("%H:%M:%S", time.gmtime(s))
            print(f"step {step}/{self.total} | {hms(elapsed)} | eta {hms(eta)} | {values}", flush=True)


# metrics.png: panel titles by group, in this order (a metric not named here keeps its key, under
# "other"); the accuracies and win rates get a dashed line at chance, 0.5
PANEL_GROUPS = {
    "evaluation (exact on the toy)": {
        "gold_reward": "gold reward", "win_rate": "win rate vs demonstrations",
        "fkl": "KL(expert || pi)", "rkl": "KL(pi || expert)", "js": "JS(expert, pi)", "tv": "TV(expert, pi)",
        "fkl_demos": "KL(demonstrations || pi)", "traj_entropy": "entropy of d(y|x), nats",
        "length": "response length, tokens with EOS", "eos_rate": "responses ending in EOS",
        "modes_covered": "expert modes holding > 5% mass", "outside_support": "mass outside expert's support"},
    "reward model / discriminator": {
        "rm_accuracy_heldout": "reward accuracy, held-out pairs", "rm_accuracy": "reward accuracy, training pairs",
        "rm_loss": "reward-model loss", "pairs": "pairs in the reward step",
        "reward_offset": "reward offset (demos' mean score)",
        "disc_loss": "discriminator loss", "disc_accuracy": "discriminator accuracy"},
    "policy step": {
        "loss": "SFT loss, NLL per response", "sft_loss": "SFT loss, NLL per response",
        "score": "PPO: reward per response", "kl_ref": "PPO: KL(pi || pi_ref) per response",
        "entropy": "PPO: entropy per token", "pg_loss": "PPO: policy loss", "v_loss": "PPO: value loss",
        "approx_kl": "PPO: approx. KL per update", "clipfrac": "PPO: fraction of ratios clipped",
        "explained_variance": "PPO: value explained variance", "bon_reward": "Best-of-N: reward of the picks",
        "kl_to_target": "exact step: KL(pi || pi*)"},
}
CHANCE = {"win_rate", "rm_accuracy_heldout", "rm_accuracy", "disc_accuracy"}


def plot_metrics(out, names=None, filename=PLOT, xlabel="step"):
    """Draw one small panel per numeric metric of out/metrics.jsonl into out/metrics.png, titled
    and grouped by PANEL_GROUPS; or, with `names`, one row of the panels (a), (b), ... of those
    metrics in that order into out/filename (MLIRL Fig. 2: train_mlirl.py). Rank 0's job."""
    if not dist.is_main() or os.environ.get("NANOIRL_NO_PLOTS"):  # NANOIRL_NO_PLOTS=1: sweeps and tests skip it
        return None
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe on a headless machine
    from matplotlib.ticker import MaxNLocator
    rows = [json.loads(line) for line in (Path(out) / METRICS).read_text().splitlines() if line]
    is_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    logged = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "step" and any(is_num(r.get(k)) for r in rows)]
    titles = {k: t for group in PANEL_GROUPS.values() for k, t in group.items()}
    if names:
        groups = {None: [k for k in names if k in logged]}
    else:
        groups = {g: [k for k in keys if k in logged] for g, keys in PANEL_GROUPS.items()}
        groups["other"] = [k for k in logged if k not in titles]
    groups = {g: keys for g, keys in groups.items() if keys}
    if not groups:
        return None
    cols = min(4, max(len(keys) for keys in groups.values()))
    heights = [math.ceil(len(keys) / cols) * 2.2 + 0.35 * (group is not None) for group, keys in groups.items()]
    # every panel placed by hand (a layout engine takes seconds for 20 panels): a group is a band of
    # rows 2.2 in high under its 0.35 in title, a panel keeps 0.35 in for its title, 0.45 in below
    fig = Figure(figsize=(3 * cols, sum(heights)))
    top = sum(heights)
    for (group, keys), band in zip(groups.items(), heights):
        n_rows = math.ceil(len(keys) / cols)
        if group:
            fig.text(0.5, (top - 0.05) / sum(heights), group, ha="center", va="top", fontsize=10, fontweight="bold")
        grid = fig.add_gridspec(n_rows, cols, left=0.55 / (3 * cols), right=1 - 0.15 / (3 * cols),
                                top=(top - band + n_rows * 2.2 - 0.35) / sum(heights),
                                bottom=(top - band + 0.45) / sum(heights), wspace=0.35, hspace=0.8 / 1.4)
        top -= band
        axes = [fig.add_subplot(grid[i // cols, i % cols]) for i in range(len(keys))]
        for i, (ax, name) in enumerate(zip(axes, keys)):
            steps, values = zip(*[(r["step"], r[name]) for r in rows if is_num(r.get(name))])
            ax.plot(steps, values, lw=1, marker="." if len(steps) < 30 else None)
            if name in CHANCE:
                ax.axhline(0.5, color="0.5", ls="--", lw=0.8, label="chance")
                ax.legend(fontsize=7, loc="best")
            ax.set_title(("(%s) " % "abcdefghijklmnopqrstuvwxyz"[i] if names else "") + titles.get(name, name), fontsize=9)
            ax.set_xlabel(xlabel, fontsize=7, labelpad=1)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and rounds are whole numbers
            ax.tick_params(labelsize=7)
    fig.savefig(Path(out) / filename, dpi=100)
    return Path(out) / filename
