"""
The toy's experiment tables: exact ML-IRL, soft policy iteration and RLignment's reward-model
choices on the toy MDP, built on the exact solvers of toy/exact.py (mlirl_exact, spin_exact,
bt_optimum, exact_policy_step, ...).

  scheme_table(mdp)                 which reference / pairs / beta converge (exact.scheme_rounds)
  best_of_n_table(...)              RLignment's Init-SFT / Init-Demo / SFT-Demo reward models
                                    evaluated by the exact law of Best-of-N (bon_reward_models,
                                    best_of_n_means: any value, e.g. the number of "a"s, of the pick)
  mlirl_lines, gpt_vs_sft           SFT against ML-IRL variants (VARIANTS) and SPIN: tables, tiny GPT
  heldout_lines(seed)               a reward shared by all prompts against SFT on held-out prompts
  horizon_lines(seed)               SFT against ML-IRL as the horizon grows
  print_over_seeds(runs)            a table's rows, or their mean ± std over seeds

Run `python -m toy.irl` for the tables (~3 min on 2 cores; the time taken is printed at the end),
`python -m toy.irl --gpt` for the tiny GPT; `--seeds 5` runs either over 5 demonstration sets (and
GPT initialisations) and prints mean ± std (print_over_seeds); a part:
    python -m toy.irl --table mlirl --demos 30 --classes full,position   # ML-IRL and SPIN rounds, ~25 s
    python -m toy.irl --table bon                                        # Best-of-N table, ~5 s
    python -m toy.irl --table bon --style 1                              # + the "a"s in each pick
    python -m toy.irl --table heldout --rounds 4 --seeds 5               # when ML-IRL beats SFT, ~40 s
`--ppo` adds to the heldout and horizon tables ML-IRL rows whose policy step is PPO (exact.ppo_step):
~18 and ~44 min over 5 seeds on 2 busy cores (docs/results.md).
"""
import argparse
import copy
import math
import time
from dataclasses import replace

import torch
import torch.nn as nn

from nanoirl import mlirl, soft_pi
from nanoirl.mlirl import MLIRLConfig
from nanoirl.cli import int_list, nonnegative_float, positive_int, seed_arg
from toy import metrics
from toy.exact import all_rewards, fit_sft, mlirl_exact, ppo_step, scheme_rounds, spin_exact, table_of, table_step
from toy.mdp import EOS, PAD, ToyConfig, ToyMDP
from toy.tabular import TabularPolicy, TabularScalar
from toy.train import minimise


SCHEMES = [(moving, accumulate) for moving in (True, False) for accumulate in (False, True)]


def scheme_table(mdp, n_demos=30, betas=(0.05, 0.2, 1.0), rounds=10, seed=1):
    """KL(empirical || pi_k) over `rounds` exact rounds for every {moving, fixed} reference x
    {pairs accumulated, not} x beta, from two starts: the uniform policy and an under-fitted SFT
    policy, 0.9 empirical + 0.1 uniform. Returns {(start, moving, accumulate, beta): [KL by round]}."""
    demos = mdp.demonstrations(n_demos, torch.Generator().manual_seed(seed))
    d = mdp.empirical_logprob(demos[0], demos[2])
    uniform = torch.full_like(d, -math.log(d.shape[1]))
    starts = {"uniform": uniform, "0.9 emp + 0.1 unif": torch.logaddexp(d + math.log(0.9), uniform + math.log(0.1))}
    return {(start, moving, acc, beta): scheme_rounds(d, s0, beta, rounds, moving, acc)
            for start, s0 in starts.items() for moving, acc in SCHEMES for beta in betas}


def print_scheme_table(table):
    print("KL(empirical || pi_k), exact Bradley-Terry fit (re-initialised = persistent) and exact policy step;"
          " >1e6: diverged (log-probs reach the -1e9 floor)")
    rounds = len(next(iter(table.values())))
    show = sorted({k for k in (1, 2, 3, 5, rounds) if k <= rounds})
    print(f"  {'start':18s} {'reference':9s} {'pairs':12s} {'beta':>5s} " + " ".join(f"{'k=' + str(k):>9s}" for k in show))
    for (start, moving, acc, beta), kls in table.items():
        print(f"  {start:18s} {'moving' if moving else 'fixed':9s} {'accumulated' if acc else 'this round':12s} "
              f"{beta:5.2f} " + " ".join(f"{kls[k - 1]:9.3g}" if kls[k - 1] < 1e6 else f"{'>1e6':>9s}"
                                         for k in show))


def bon_reward_models(mdp, kind="markov", n_demos=300, rm_epochs=20, rm_lr=0.1, seed=0):
    """RLignment's reward-model data choices for Best-of-N on pi_SFT samples.
    pi_init = the uniform policy of class `kind`, pi_SFT = SFT on n_demos demonstrations in that
    class; each reward model is a zero-initialised TabularScalar trained with the logistic loss
    (reward = its logit) on n_demos positives vs n_demos negatives of the same prompts; the
    gold-preference model is Bradley-Terry on pairs of pi_SFT samples labelled by
    P(y1 ≻ y2) = sigma(gold(y1) - gold(y2)). "ideal" rows are the infinite-data logits
    log p_pos - log p_neg. Returns pi_SFT's log-probs and {name: r(x, y)}, each (n_prompts, N)."""
    g = torch.Generator().manual_seed(seed)
    demos = mdp.demonstrations(n_demos, g)
    p, m, _ = demos
    init, sft = TabularPolicy(mdp, kind), TabularPolicy(mdp, kind)
    fit_sft(mdp, sft, demos)
    init_s = (p, m, init.sample(p, m, mdp.T, EOS, PAD, generator=g)[0])
    sft_s = (p, m, sft.sample(p, m, mdp.T, EOS, PAD, generator=g)[0])
    cfg = MLIRLConfig(rm_loss="bce", rm_epochs=rm_epochs, rm_lr=rm_lr, eos_id=EOS, pad_id=PAD)
    rewards = {}
    for name in ("init-sft", "init-demo", "sft-demo"):
        rm = TabularScalar(mdp)
        mlirl.reward_step(rm, mlirl.rlignment_pairs(name, demos, init_s, sft_s), cfg, g)
        rewards[name] = all_rewards(mdp, rm).detach()
    gold = mdp.gold_reward()
    x, y1, y2 = mdp.prompt_index(p), sft_s[2], sft.sample(p, m, mdp.T, EOS, PAD, generator=g)[0]
    first = torch.rand(len(x), generator=g, dtype=gold.dtype) < torch.sigmoid(
        gold[x, mdp.response_ids(y1)] - gold[x, mdp.response_ids(y2)])
    chosen, rejected = torch.where(first[:, None], y1, y2), torch.where(first[:, None], y2, y1)
    rm = TabularScalar(mdp)
    mlirl.reward_step(rm, mlirl.make_pairs(p, m, chosen, rejected), replace(cfg, rm_loss="bt"), g)
    rewards["gold-pref BT"] = all_rewards(mdp, rm).detach()
    with torch.no_grad():
        init_logd, sft_logd = mdp.trajectory_logprobs(init), mdp.trajectory_logprobs(sft)
    exp = mdp.expert_logprob
    rewards.update({"ideal init-sft": sft_logd - init_logd, "ideal init-demo": exp - init_logd,
                    "ideal sft-demo": exp - sft_logd, "ideal gold": gold})
    return sft_logd, rewards


def best_of_n_means(sft_logd, rewards, value, ns=(1, 2, 4, 8, 16, 32)):
    """{name: [E value(x, y) of the Best-of-n pick among pi_SFT samples by that reward, for n in ns]},
    exact in n (soft_pi.best_of_n_logprobs), the mean over prompts."""
    return {name: [(soft_pi.best_of_n_logprobs(sft_logd, r, n).exp() * value).sum(-1).mean().item()
                   for n in ns] for name, r in rewards.items()}


def best_of_n_table(mdp, kind="markov", n_demos=300, ns=(1, 2, 4, 8, 16, 32), rm_epochs=20,
                    rm_lr=0.1, seed=0):
    """RLignment's table: {reward model: [E gold of Best-of-n for n in ns]} (bon_reward_models)."""
    return best_of_n_means(*bon_reward_models(mdp, kind, n_demos, rm_epochs, rm_lr, seed), mdp.gold_reward(), ns)


VARIANTS = {  # mlirl_exact flags: what each ML-IRL variant keeps and moves
    "Eq.10 gradient, fixed ref": dict(reward_grad="eq10", reinit=False, moving=False),
    "BT, reinit, moving ref": dict(),
    "BT, reinit, moving ref, accumulate (authors)": dict(accumulate=True),
    "BT, persistent reward, fixed ref": dict(reinit=False, moving=False),
}
KEYS = ("fkl_demos", "fkl", "rkl", "tv", "traj_entropy", "gold_reward")


def _fmt(v):
    """A KL above 1e6 nats is printed "inf": it comes from mass where the other distribution has
    none (log 0 read as the NEG_INF = -1e9 floor). Between float64 distributions without zeros a
    KL is at most ~745 nats, the log of the smallest double."""
    return f"{'inf':>9s}" if v > 1e6 else f"{v:9.4f}"


def _cell(v):
    """One number, or (mean, std) over seeds as "mean ±std"."""
    if not isinstance(v, tuple):
        return _fmt(v)
    return f"{'inf':>9s} ±{'':7s}" if v[0] > 1e6 else f"{v[0]:9.4f} ±{v[1]:7.4f}"


def _row(name, d, keys=KEYS):
    return f"  {name:46s} " + " ".join(_cell(d[k]) for k in keys)


def print_over_seeds(runs, keys=KEYS):
    """runs: one list of lines per seed, each line a header string or (row name, {key: number}),
    the same headers and row names in every seed. Prints each row's numbers (one seed) or their
    mean ± std over the seeds (metrics.over_seeds: sample std, ddof = 1)."""
    for lines in zip(*runs):
        if isinstance(lines[0], str):
            print(lines[0])
        else:
            name, d = lines[0]
            print(_row(name, d if len(lines) == 1 else metrics.over_seeds([d for _, d in lines]), keys))


def _print_columns(rounds):
    print("columns:", " ".join(KEYS), "(fkl = KL(expert || pi), rkl = KL(pi || expert), "
          "fkl_demos = KL(demonstrations || pi))")
    print(f"rows: SFT to convergence; 'name r{rounds}' = that ML-IRL variant after {rounds} rounds, "
          "'round k' = after k rounds (tables: from the uniform policy; tiny GPT: from SFT); SPIN = exact DPO\n"
          "rounds against the last round's policy, beta = 1 (its exact round leaves SFT where it is)")


def gpt_vs_sft(mdp, n_demos, rounds=5, seed=1, init_seed=0, variants=("BT, reinit, moving ref",
                                                                           "BT, reinit, moving ref, accumulate (authors)")):
    """The tiny GPT (toy/gpt.py, initialised with init_seed): SFT to convergence, then ML-IRL rounds
    from the SFT policy (exact pairs, tabular reward, exact policy step = reverse-KL projection onto
    the GPT class) and SPIN rounds. Returns the lines of print_over_seeds."""
    from toy.gpt import tiny_gpt
    demos = mdp.demonstrations(n_demos, torch.Generator().manual_seed(seed))
    d = mdp.empirical_logprob(demos[0], demos[2])
    sft = tiny_gpt(mdp, seed=init_seed)
    fit_sft(mdp, sft, demos, steps=500)
    with torch.no_grad():
        ls = mdp.trajectory_logprobs(sft)
    lines = [f"\n tiny GPT, {n_demos} demonstrations", ("SFT", metrics.summary(mdp, ls, d))]
    for name in variants:
        for row in mlirl_exact(mdp, copy.deepcopy(sft), d, rounds, policy_steps=50, **VARIANTS[name]):
            lines.append((f"{name} r{row['round']}", row))
    for row in spin_exact(mdp, copy.deepcopy(sft), d, rounds, steps=50):
        lines.append((f"SPIN from SFT r{row['round']}", row))
    return lines


def bon_lines(mdp, classes, seed=0, ns=(1, 2, 4, 8, 16, 32)):
    """RLignment's Best-of-N table (best_of_n_table) per class, as lines of print_over_seeds with
    the keys "N=1", "N=2", ...; with a styled demonstrator (ToyConfig.style) also the mean number
    of letters "a" in the pick, against the expert's and the demonstrator's."""
    lines = [f"\n== Best-of-N gold reward on pi_SFT samples (exact law), N = {ns}"]
    n_a = (mdp.responses == 2).sum(-1).double()
    for kind in [c for c in ("markov", "position", "full") if c in classes]:
        lines.append(f" {kind} policy class, 300 demonstrations")
        sft_logd, rewards = bon_reward_models(mdp, kind, seed=seed)
        lines += [(name, {f"N={n}": x for n, x in zip(ns, v)})
                  for name, v in best_of_n_means(sft_logd, rewards, mdp.gold_reward(), ns).items()]
        if mdp.cfg.style:
            lines.append(f"  number of 'a's in the pick (expert {(mdp.gold_logprob.exp() * n_a).sum(-1).mean():.3f}, "
                         f"styled demonstrator {(mdp.expert_logprob.exp() * n_a).sum(-1).mean():.3f})")
            lines += [(f"{name} #a", {f"N={n}": x for n, x in zip(ns, v)})
                      for name, v in best_of_n_means(sft_logd, rewards, n_a, ns).items()]
    return lines


HELDOUT_KEYS = ("gold_train", "gold_heldout", "tv_train", "tv_heldout", "fkl_train", "fkl_heldout")


def shared_reward(fit_loss, n):
    """One reward per response, shared by every prompt: argmin fit_loss(r) by L-BFGS (convex)."""
    r = nn.ParameterList([nn.Parameter(torch.zeros(n, dtype=torch.float64))])
    minimise(r, lambda: fit_loss(r[0]), steps=300)
    return r[0].detach()


def heldout_lines(seed, n_demos=30, n_train=3, n_prompts=6, rounds=4, beta=1.0, ppo_iterations=None):
    """Does a reward generalise where the policy does not (MLIRL's argument)? Every prompt has the
    same expert (ToyConfig.shared_expert); the demonstrations come from the first n_train prompts
    only; the policy is a full table per prompt, so SFT (its exact optimum, the empirical law) leaves
    the held-out prompts at the uniform policy. The ML-IRL rows use a reward of one number per
    response shared by all prompts, fitted exactly on the training prompts' pairs (demonstration ≻
    pi_k, pi_k's exact law), and a moving reference. Their exact policy step is the closed form on
    every prompt (the held-out prompts need no demonstrations for it); with ppo_iterations, two
    more rows replace it by that many PPO updates (ppo_step: sampled rollouts on all prompts, seeded
    by `seed`) on a full table, evaluated exactly. Their starts are the exact rows' (table_of):
    the uniform law over responses, and SFT = fit_sft's L-BFGS table on the training prompts
    (within ~1e-8 in TV of the empirical law) and that uniform law on the held-out ones. Returns
    the lines of print_over_seeds: gold reward, TV and KL(expert || pi) on each set of prompts."""
    mdp = ToyMDP(ToyConfig(n_prompts=n_prompts, shared_expert=True))
    x = torch.arange(n_demos) % n_train
    prompts, mask = mdp.prompt_tokens(x)
    responses = mdp.sample(mdp.expert_logprob, x, torch.Generator().manual_seed(seed))
    d = mdp.empirical_logprob(prompts, responses)[:n_train]          # held-out rows have no demonstrations
    n = d.shape[1]
    uniform = torch.full((n_prompts, n), -math.log(n), dtype=torch.float64)
    sft = torch.cat([d, uniform[n_train:]])                          # the full-class SFT optimum
    pooled = (d.logsumexp(0) - math.log(n_train)).expand(n_prompts, n)  # SFT in a prompt-blind class

    def split(logd):
        e = mdp.expert_logprob
        per = {"gold": (logd.exp() * mdp.gold_reward()).sum(-1), "tv": metrics.tv(e, logd),
               "fkl": metrics.forward_kl(e, logd)}
        return {f"{k}_{part}": v[rows].mean().item() for k, v in per.items()
                for part, rows in (("train", slice(0, n_train)), ("heldout", slice(n_train, None)))}

    def mlirl_rounds(pi, step):  # Bradley-Terry on (demonstration ≻ pi_k) pairs of the training prompts
        for _ in range(rounds):
            w = d.exp()[:, :, None] * pi[:n_train].exp()[:, None, :]
            r = shared_reward(lambda r: mlirl.pair_loss(r[None, :, None], r[None, None, :], w), n)
            pi = step(pi, r.expand(n_prompts, n))                    # pi_{k+1} from pi_k (moving reference)
        return pi
    exact = lambda pi, r: soft_pi.trajectory_optimum(pi, r, beta)
    # MaxEnt IRL / Eq. 10 with the reference fixed at the uniform policy: max E_D[r] - beta log Z
    maxent = shared_reward(lambda r: -((d.exp() * r).sum(-1) - soft_pi.soft_value(uniform[:n_train], r, beta)).mean(), n)
    lines = [f"\n== {n_prompts} prompts, one shared expert; {n_demos} demonstrations on prompts 0-{n_train - 1}, "
             f"prompts {n_train}-{n_prompts - 1} held out; full table per prompt; {rounds} rounds, beta = {beta:g}",
             ("uniform policy", split(uniform)),
             ("SFT (per-prompt table)", split(sft)),
             ("SFT in a prompt-blind class (pooled)", split(pooled)),
             ("ML-IRL shared reward, from SFT", split(mlirl_rounds(sft, exact))),
             ("ML-IRL shared reward, from uniform", split(mlirl_rounds(uniform, exact))),
             ("MaxEnt IRL shared reward, ref uniform", split(soft_pi.trajectory_optimum(uniform, maxent.expand(n_prompts, n), beta)))]
    if ppo_iterations:  # the exact rows' starts as full tables, SFT's fitted by L-BFGS (fit_sft)
        demos, everyone = (prompts, mask, responses), mdp.prompt_tokens(torch.arange(n_prompts))
        sft_table = TabularPolicy(mdp, "full")
        fit_sft(mdp, sft_table, demos)
        with torch.no_grad():
            sft_fit = torch.cat([mdp.trajectory_logprobs(sft_table)[:n_train], uniform[n_train:]])
        cfg = MLIRLConfig(beta=beta, eos_id=EOS, pad_id=PAD)
        for name, start in (("from SFT", sft_fit), ("from uniform", uniform)):
            ppo_round = ppo_step(mdp, demos, seed, prompts=everyone, iterations=ppo_iterations)
            step = table_step(mdp, table_of(mdp, start), ppo_round, cfg)
            lines.append((f"ML-IRL shared reward, PPO step, {name}", split(mlirl_rounds(start, step))))
    return lines


def horizon_lines(seed, horizons=(3, 4, 5, 6), kind="markov", n_demos=30, rounds=8, ppo_iterations=None):
    """Longer horizons, where behaviour cloning is said to compound its errors: SFT against ML-IRL
    (re-initialised reward, moving reference, from the uniform policy, exact) in a restricted class,
    for each horizon T (the expert's modes have 2 .. T-1 letters). With ppo_iterations, a row
    with the same exact reward steps (mlirl_exact) and ppo_iterations PPO updates as the policy
    step (ppo_step, seeded by `seed`), evaluated exactly. Lines of print_over_seeds."""
    lines = []
    for T in horizons:
        mdp = ToyMDP(ToyConfig(horizon=T))
        demos = mdp.demonstrations(n_demos, torch.Generator().manual_seed(seed))
        d = mdp.empirical_logprob(demos[0], demos[2])
        sft = TabularPolicy(mdp, kind)
        fit_sft(mdp, sft, demos)
        with torch.no_grad():
            ls = mdp.trajectory_logprobs(sft)
        lines += [f" horizon {T}, {kind} table, {n_demos} demonstrations", ("SFT", metrics.summary(mdp, ls, d)),
                  (f"ML-IRL r{rounds}", mlirl_exact(mdp, TabularPolicy(mdp, kind), d, rounds)[-1])]
        if ppo_iterations:
            step = ppo_step(mdp, demos, seed, iterations=ppo_iterations)
            lines.append((f"ML-IRL PPO step r{rounds}", mlirl_exact(mdp, TabularPolicy(mdp, kind), d, rounds,
                                                                   policy_step=step)[-1]))
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", default="all", choices=["all", "mlirl", "bon", "schemes", "heldout", "horizon"],
                        help="mlirl: exact ML-IRL variants against SFT; bon: RLignment's Best-of-N table; "
                             "not part of all: schemes: which reference / pairs / beta converge, exact; heldout: "
                             "a shared reward on held-out prompts; horizon: SFT against ML-IRL as the horizon grows")
    parser.add_argument("--demos", type=int_list(positive_int), default="30,300,3000",
                        help="numbers of demonstrations (mlirl table; schemes: the first)")
    parser.add_argument("--classes", default="full,position,markov",
                        help="policy classes, comma-separated, from full, position, markov")
    parser.add_argument("--rounds", type=positive_int, default=8, help="ML-IRL rounds per variant")
    parser.add_argument("--seed", type=seed_arg, default=1, help="seed of the demonstration sets (mlirl table, --gpt)")
    parser.add_argument("--seeds", type=positive_int, default=1,
                        help="runs i = 0 .. N-1, each with the demonstration sets of seed --seed + i (Best-of-N: i) and "
                             "the GPT initialised with seed i; N > 1 prints mean ± std over the runs (not schemes)")
    parser.add_argument("--style", type=nonnegative_float, default=0.0,
                        help="demonstrations with a style the gold reward does not value: the expert tilted by "
                             "exp(style * number of 'a's) (toy.mdp.ToyConfig.style); the gold reward stays the expert's")
    parser.add_argument("--gpt", action="store_true", help="the tiny GPT instead (60 and 600 demonstrations)")
    parser.add_argument("--ppo", type=positive_int, nargs="?", const=40, default=None, metavar="ITERATIONS",
                        help="heldout and horizon tables: add ML-IRL rows whose policy step is PPO "
                             "(train_mlirl.py's toy-table settings; ITERATIONS updates a round, default 40)")
    args = parser.parse_args()
    classes = [c.strip() for c in args.classes.split(",")]
    if not classes or any(c not in ("full", "position", "markov") for c in classes):
        parser.error(f"--classes {args.classes}: use a comma-separated list of full, position, markov")
    torch.set_num_threads(1)
    t0 = time.time()
    mdp = ToyMDP(ToyConfig(style=args.style))
    ns, seeds = args.demos, range(args.seeds)  # run i: demonstration seed --seed + i (Best-of-N: i), GPT init i
    if args.seeds > 1:
        print(f"mean ± std over {args.seeds} seeds (sample std, ddof = 1)")
    if args.gpt:
        _print_columns(5)
        for n in (60, 600):
            print_over_seeds([gpt_vs_sft(mdp, n, seed=args.seed + i, init_seed=i) for i in seeds])
    elif args.table == "schemes":
        print_scheme_table(scheme_table(mdp, ns[0], rounds=args.rounds, seed=args.seed))
    elif args.table == "heldout":
        print_over_seeds([heldout_lines(args.seed + i, n_demos=ns[0], rounds=args.rounds, ppo_iterations=args.ppo)
                          for i in seeds], HELDOUT_KEYS)
    elif args.table == "horizon":
        _print_columns(args.rounds)
        print_over_seeds([horizon_lines(args.seed + i, n_demos=ns[0], rounds=args.rounds, ppo_iterations=args.ppo)
                          for i in seeds])
    else:
        if args.table in ("all", "mlirl"):
            _print_columns(args.rounds)
            order = [c for c in ("full", "position", "markov") if c in classes]
            print_over_seeds([mlirl_lines(mdp, ns, order, args.rounds, args.seed + i) for i in seeds])
        if args.table in ("all", "bon"):
            ns_bon = (1, 2, 4, 8, 16, 32)
            print_over_seeds([bon_lines(mdp, classes, seed=i, ns=ns_bon) for i in seeds],
                             keys=[f"N={n}" for n in ns_bon])
    print(f"\ndone in {time.time() - t0:.0f} s")


def mlirl_lines(mdp, ns, classes, rounds, seed):
    """SFT against each ML-IRL variant and SPIN after `rounds` rounds, per number of demonstrations
    and policy class (demonstration sets of `seed`); every round is shown for the full table at the
    smallest number. Returns the lines of print_over_seeds."""
    lines = []
    for n in ns:
        demos = mdp.demonstrations(n, torch.Generator().manual_seed(seed))
        d = mdp.empirical_logprob(demos[0], demos[2])
        lines.append(f"\n== {n} demonstrations. 'empirical' is their empirical distribution, the full-class optimum of SFT\n"
                     "   and of ML-IRL; its fkl is inf (responses no demonstration holds). The full table's SFT row is\n"
                     "   that optimum after 200 L-BFGS steps: the unseen responses keep a little mass, so its fkl is finite")
        lines.append(("empirical (full-class optimum)", {"fkl_demos": 0.0, **metrics.summary(mdp, d)}))
        for kind in classes:
            sft = TabularPolicy(mdp, kind)
            fit_sft(mdp, sft, demos)
            with torch.no_grad():
                ls = mdp.trajectory_logprobs(sft)
            lines += [f" {kind} table", ("SFT", metrics.summary(mdp, ls, d))]
            for name, kw in VARIANTS.items():
                h = mlirl_exact(mdp, TabularPolicy(mdp, kind), d, rounds, **kw)
                lines.append((f"{name} r{rounds}", h[-1]))
                if kind == "full" and n == min(ns):
                    lines += [(f"   round {row['round']}", row) for row in h[:-1]]
            # SPIN from the ML-IRL rows' start; from SFT it does not move (SFT is stationary for it)
            lines.append((f"SPIN r{rounds}", spin_exact(mdp, TabularPolicy(mdp, kind), d, rounds)[-1]))
    return lines


if __name__ == "__main__":
    main()
