"""
train_mlirl.py over seeds, run in this process (the same code and numbers as `python train_mlirl.py
--seed s`, byte for byte: tests/test_seeds.py), then the figure of its runs (toy/plots.py):

    python sweep_mlirl.py --seeds 5                          # MLIRL Fig. 2 on the toy, seeds 1-5, ~7 min
    python sweep_mlirl.py --figures mlirl_schemes --seeds 5  # the 8 ML-IRL schemes with PPO, ~30 min

  mlirl_fig2     `python train_mlirl.py --seed s` (its defaults) for s = 1 .. --seeds, each into
                 --runs-dir/seed-s; --out/mlirl_fig2.png draws the mean and the band mean ± std
  mlirl_schemes  `train_mlirl.py --model toy-tabular --rounds 8 <flags> --seed s` for the flags of each
                 scheme (toy.plots.SCHEMES), into --runs-dir/schemes/<flags>/seed-s; --out/mlirl_schemes.png
Each table prints mean ± std over the seeds (toy.metrics.mean_std: sample std, ddof = 1).
`python -m toy.plots --figures mlirl_fig2 --seeds N` redraws a figure from the runs, without running them.
"""
import argparse
import shlex
import time
from pathlib import Path

import torch

import train_mlirl
from nanoirl.cli import positive_int
from toy import plots


def run_seeds(seeds, runs_dir, flags=()):
    """train_mlirl.py with its defaults plus `flags`, --seed s for s = 1 .. seeds, each into
    plots.seed_dir(runs_dir, s) (--force), in this process."""
    for s in range(1, seeds + 1):
        out = plots.seed_dir(runs_dir, s)
        train_mlirl.main(train_mlirl.parser.parse_args(["--seed", str(s), "--out", str(out), "--force", *flags]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--figures", default="mlirl_fig2", type=plots.figure_list(plots.SEED_FIGURES),
                        help="which sweeps to run and draw, comma-separated, from " + ",".join(plots.SEED_FIGURES))
    parser.add_argument("--seeds", type=positive_int, default=2, help="runs --seed 1 .. N; N > 1 prints mean ± std")
    parser.add_argument("--runs-dir", default="out/mlirl-seeds",
                        help="where the runs go (seed-s/, schemes/<flags>/seed-s/)")
    parser.add_argument("--mlirl-flags", default="", help="more train_mlirl.py flags for every run, one string")
    parser.add_argument("--out", default="out/figures", help="folder for the PNGs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: one thread is the fastest
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0, more = time.time(), shlex.split(args.mlirl_flags)
    if "mlirl_fig2" in args.figures:
        run_seeds(args.seeds, args.runs_dir, more)
    if "mlirl_schemes" in args.figures:
        for flags in plots.SCHEMES:
            run_seeds(args.seeds, plots.scheme_dir(args.runs_dir, flags), [*plots.SCHEME_BASE, *shlex.split(flags), *more])
    plots.seed_figures(args.figures, args.seeds, args.runs_dir, out)
    print(f"wrote {out}/{', '.join(f'{name}.png' for name in args.figures)} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
