"""
Maximum-likelihood IRL (MLIRL Algorithm 1; nanoirl/mlirl.py): learn a reward from demonstrations
alone. Round 0 is SFT; every later round pairs each demonstration with a sample of the current
policy (demonstration ≻ sample), fits a Bradley-Terry reward to the pairs (Eq. 11) and takes a
KL-regularised policy step on it, pi_{k+1} ∝ pi_k exp(r / beta) (Eq. 9): PPO, exact soft policy
iteration (toy only) or Best-of-N. --policy-step spin runs SPIN instead (nanoirl/dpo.py), MLIRL's
baseline: DPO on the same pairs against the last round's policy, with no reward model.

    python train_mlirl.py                            # toy MDP, tiny GPT, PPO: exact evaluation
    python train_mlirl.py --model toy-tabular --policy-class markov --policy-step soft-pi
    python train_mlirl.py --pairs init-sft --rounds 1   # RLignment's reward-model data choices
    python train_mlirl.py --policy-step spin             # SPIN: DPO on (demonstration ≻ sample) pairs
    python train_mlirl.py --beta 0.05 --accumulate-pairs  # the authors' pipeline (not convergent: docs/results.md)
    python train_mlirl.py --model pythia-1b --data tldr.jsonl --eval-pairs prefs.jsonl --out out/mlirl-1b
    python train_mlirl.py --model pythia-1b         # TL;DR and its preferences (README: the MLIRL TL;DR experiment)
    python -m nanoirl.data fake-prefs.jsonl --n 8 --preferences   # a dry run on a CPU (docs/operations.md), after train_sft.py's:
    python train_mlirl.py --model out/dry-sft/policy --sft-steps 0 --data fake.jsonl --eval-pairs fake-prefs.jsonl --max-prompt-len 256 --eval-size 2 --rounds 1 --ppo-iterations 1 --rollout-batch-size 2 --out out/dry-mlirl

Per round, metrics.jsonl holds the policy's evaluation (exact on the toy) and the reward model's
held-out pair accuracy; mlirl_fig2.png draws MLIRL Fig. 2 from it: (a) reward accuracy, (b) gold
reward of the policy's samples, (c) win rate against the demonstrations, over rounds.
"""
import nanoirl.entry  # noqa: F401  (first: a Ctrl-C while torch is imported ends in one line)
import argparse
import copy
import functools
import json

import torch

from nanoirl import cli, data, dist, dpo, logger, mlirl, ppo, resume, run, sft
from nanoirl.model import GPT
from nanoirl.task import add_task_args, load_task
from toy.exact import exact_policy_step
from toy.task import task_for

# The defaults that depend on --model: (toy table, toy GPT, text); text's are MLIRL Appendix A's.
DEFAULTS = {                  # toy table  toy GPT  text
    "sft_lr":                   (0.1,       3e-3,    1e-5),
    "rm_epochs":                (20,        20,      1),
    "rm_lr":                    (0.05,      1e-3,    3e-6),
    "ppo_iterations":           (40,        40,      100),
    "rollout_batch_size":       (256,       256,     64),
    "ppo_lr":                   (0.05,      1e-4,    3e-6),    # toy GPT: at 1e-3 PPO misses pi* by nats (docs/results.md)
    "num_minibatches":          (4,         4,       1),
    "temperature":              (1.0,       1.0,     0.7),     # the toy is evaluated exactly at 1
    "dpo_epochs":               (20,        20,      2),
    "dpo_lr":                   (0.05,      1e-4,    5e-7),    # toy: PPO's lr; text: SPIN's (Chen et al. 2024)
    "micro_batch_size":         (None,      None,    8),       # pythia-1b: 8 x 565 tokens of activations ~7 GB
}

parser = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
cli.add_common_args(parser, out="out/mlirl", model="toy-gpt")
add_task_args(parser)
g = parser.add_argument_group("ML-IRL (MLIRL Algorithm 1; defaults: the scheme that converges exactly, docs/results.md)")
g.add_argument("--rounds", type=cli.nonnegative_int, default=4, help="IRL rounds after round 0 (SFT)")
g.add_argument("--policy-step", default="ppo", choices=["ppo", "soft-pi", "bon", "spin"],
               help="PPO (MLIRL Sec. 6.1), exact soft policy iteration (toy only), Best-of-N SFT (Sec. 6.2), "
                    "or spin: SPIN, DPO (MLIRL Eq. 4) on the round's pairs against the last round's policy, "
                    "in place of both the reward step and the policy step")
g.add_argument("--pairs", default="mlirl", choices=["mlirl", "init-sft", "init-demo", "sft-demo"],
               help="reward-model data: demonstration ≻ current sample (MLIRL Eq. 11), or one of "
                    "RLignment's fixed sets built from pi_init, pi_SFT and the demonstrations")
g.add_argument("--beta", type=cli.positive_float, default=1.0,
               help="KL coefficient of the policy step: 1 as in MLIRL Eq. 5b and 9, where an exact reward fit "
                    "and an exact step land on the demonstrations in one round; the paper's runs use 0.05 "
                    "(Table 4), whose exact rounds diverge with a moving reference (docs/results.md)")
g.add_argument("--level", default="sequence", choices=["sequence", "token"],
               help="reward per response (read at the last token) or per token")
g.add_argument("--accumulate-pairs", action="store_true",
               help="keep the pairs of every round, as the authors' pipeline does (default: this round's only)")
g.add_argument("--no-reinit", action="store_true", help="keep training one reward model across rounds")
g.add_argument("--fixed-reference", action="store_true",
               help="anchor every policy step at the SFT policy instead of the previous round's")
g.add_argument("--sample-temperature", type=cli.nonnegative_float, default=None,
               help="temperature of the policy samples in the pairs (default: --temperature, the one the "
                    "policy step optimises, so that the reward compares the demonstrations with that policy; "
                    "the authors' code: ~0)")
g = parser.add_argument_group("reward model")
g.add_argument("--rm-loss", default=None, choices=["bt", "bce"],
               help="Bradley-Terry on pairs (MLIRL Eq. 11) or the logistic discriminator loss, chosen "
                    "labelled 1 (RLignment); default: bt with --pairs mlirl, bce with RLignment's sets")
g.add_argument("--rm-epochs", type=cli.positive_int, default=None, help="epochs over the pairs")
g.add_argument("--rm-lr", type=cli.learning_rate, default=None, help="AdamW lr, cosine decay")
g.add_argument("--rm-batch-size", type=cli.positive_int, default=64, help="pairs per reward-model step")
g = parser.add_argument_group("policy steps")
g.add_argument("--sft-steps", type=cli.nonnegative_int, default=300, help="round 0: SFT steps (0: --model already is the SFT policy)")
g.add_argument("--sft-lr", type=cli.learning_rate, default=None, help="SFT and Best-of-N lr")
g.add_argument("--batch-size", type=cli.positive_int, default=32, help="demonstrations per SFT / Best-of-N step")
g.add_argument("--ppo-iterations", type=cli.positive_int, default=None, help="PPO updates per round")
g.add_argument("--rollout-batch-size", type=cli.positive_int, default=None, help="prompts per PPO rollout")
g.add_argument("--ppo-lr", type=cli.learning_rate, default=None, help="PPO AdamW lr")
g.add_argument("--num-minibatches", type=cli.positive_int, default=None, help="PPO minibatches per epoch")
g.add_argument("--temperature", type=cli.positive_float, default=None,
               help="PPO sampling temperature, and the text evaluation's")
g.add_argument("--bon-n", type=cli.positive_int, default=8, help="Best-of-N: samples per prompt")
g.add_argument("--bon-steps", type=cli.positive_int, default=50, help="Best-of-N: SFT steps per round")
g.add_argument("--dpo-epochs", type=cli.positive_int, default=None,
               help="SPIN: DPO epochs over the pairs per round")
g.add_argument("--dpo-lr", type=cli.learning_rate, default=None,
               help="SPIN: DPO AdamW lr")
cli.show_defaults(parser, DEFAULTS)


def check_flags(args, toy):
    """The combinations of flags that cannot run, refused before --out is touched."""
    if args.policy_step == "soft-pi" and not toy:
        raise cli.RunError("--policy-step soft-pi needs the toy's enumeration; use ppo or bon on text")
    if args.policy_step == "ppo":
        cli.check_minibatches(args.num_minibatches, args.rollout_batch_size)
    if dist.world() > 1 and (args.policy_step != "ppo" or args.pairs != "mlirl"):
        raise cli.RunError(f"under torchrun train_mlirl.py runs --policy-step ppo on --pairs mlirl; "
                           f"--policy-step {args.policy_step} --pairs {args.pairs} runs in one process")


def configs(args, task):
    """(MLIRLConfig, PPOConfig) from the flags."""
    cfg = mlirl.MLIRLConfig(
        beta=args.beta, level=args.level, accumulate_pairs=args.accumulate_pairs and args.pairs == "mlirl",
        reinit_reward=not args.no_reinit, moving_reference=not args.fixed_reference,
        sample_temperature=args.sample_temperature, response_length=task.response_len,
        rm_loss=args.rm_loss or ("bt" if args.pairs == "mlirl" else "bce"),
        rm_epochs=args.rm_epochs, rm_batch_size=args.rm_batch_size, rm_lr=args.rm_lr,
        micro_batch_size=dist.per_rank(args.micro_batch_size), eos_id=task.eos_id, pad_id=task.pad_id,
        sample_batch_size=args.forward_batch_size, autocast_dtype=task.autocast_dtype)
    ppo_cfg = ppo.PPOConfig(
        lr=args.ppo_lr, num_minibatches=args.num_minibatches, micro_batch_size=dist.per_rank(args.micro_batch_size),
        temperature=args.temperature, response_length=task.response_len, eos_id=task.eos_id,
        pad_id=task.pad_id, missing_eos_penalty=task.missing_eos_penalty, forward_batch_size=args.forward_batch_size,
        autocast_dtype=task.autocast_dtype)
    return cfg, ppo_cfg


@torch.no_grad()
def samples(pi, task, args, gen):
    """RLignment's samples of pi on the demonstrations' prompts, --forward-batch-size at a time."""
    (p, m, _), bs = task.demos, args.forward_batch_size
    with task.autocast():
        return p, m, torch.cat([pi.sample(p[i:i + bs], m[i:i + bs], task.response_len, task.eos_id, task.pad_id,
                                          args.sample_temperature, generator=gen)[0] for i in range(0, len(p), bs)])


def sft_round(args, task, state, ckpt, out):
    """Round 0: SFT of the policy on the demonstrations, from ckpt's sft_step if the run stopped
    inside it (a checkpoint every --ckpt-every steps holds the SFT optimizer too). Then pi_ref and
    the reward model's initial weights come from the SFT policy. Returns (reward_init, pairs)."""
    policy, gen = state["policy"], state["gen"]
    sft_start = ckpt.get("sft_step", 0)
    # RLignment's pi_init is the policy before SFT: its samples are drawn now, and no copy is kept
    init_samples = ckpt["init_samples"] if "sft_step" in ckpt else \
        samples(policy, task, args, gen) if args.pairs.startswith("init-") else None
    opt = torch.optim.AdamW(policy.parameters(), lr=args.sft_lr, eps=1e-5, weight_decay=0.0)
    if "sft_step" in ckpt:
        resume.restore(ckpt, {"sft_opt": opt}, out)
    batches = data.iterate_batches(dict(zip(("p", "m", "y"), task.demos)), args.batch_size, args.seed, sft_start)
    for step in range(sft_start, args.sft_steps):
        b = next(batches)
        loss = sft.sft_step(policy, opt, b["p"], b["m"], b["y"], task.eos_id,
                            micro_batch_size=dist.per_rank(args.micro_batch_size), autocast=task.autocast)
        logger.check_finite({"sft_loss": loss}, step, out)
        if step % 50 == 0 or step == sft_start or step + 1 == args.sft_steps:
            print(f"round 0 (SFT) step {step}/{args.sft_steps} | sft_loss {loss:.4g}", flush=True)
        if (step + 1) % args.ckpt_every == 0 and step + 1 < args.sft_steps:
            resume.save_checkpoint(out, 0, {**state, "sft_opt": opt}, args, sft_step=step + 1,
                                   init_samples=init_samples)
    del opt  # its AdamW moments (8 bytes a weight) would otherwise stay on the GPU for every round
    state["ref"].load_state_dict(policy.state_dict())  # the KL anchor pi_ref, from the SFT policy
    # the reward model starts from the SFT policy's transformer and a new head (TL;DR, MLIRL), unless
    # --reward-init gave its weights; kept on the CPU, and read once a round when it is re-initialised
    init = state["reward_model"].state_dict()
    if hasattr(state["reward_model"], "gpt_neox") and not getattr(args, "reward_init", None):
        init.update((k, v) for k, v in policy.state_dict().items() if k.startswith("gpt_neox."))
    reward_init = {k: v.to("cpu", copy=True) for k, v in init.items()}
    state["reward_model"].load_state_dict(reward_init)
    pairs = None  # RLignment: one fixed data set from pi_init, pi_SFT and the demonstrations
    if args.pairs != "mlirl":
        pairs = mlirl.rlignment_pairs(args.pairs, task.demos, init_samples, samples(policy, task, args, gen))
    return reward_init, pairs


def policy_step(args, task, value, ppo_cfg, gen, out, k):
    """The policy step of round k that --policy-step picks, as mlirl.mlirl_round calls it:
    (policy, ref, reward_model, cfg) -> stats."""
    def step(policy, ref, reward_model, cfg):
        if args.policy_step == "soft-pi":
            return exact_policy_step(policy, ref, reward_model, cfg, mdp=task.mdp)
        if args.policy_step == "bon":
            opt = torch.optim.AdamW(policy.parameters(), lr=args.sft_lr, eps=1e-5, weight_decay=0.0)
            return mlirl.bon_policy_step(policy, ref, reward_model, cfg, optimizer=opt, prompts=task.demos[0],
                                         prompt_mask=task.demos[1], n=args.bon_n, steps=args.bon_steps,
                                         batch_size=args.batch_size, temperature=args.temperature, generator=gen)
        value.load_state_dict(reward_model.state_dict())  # the value model starts as the reward model

        def show(i, s):  # after each PPO update: progress, and stop on a NaN before the next rollout
            if i % 10 == 0 or i + 1 == args.ppo_iterations:
                print(f"  ppo {i}/{args.ppo_iterations} | " + " | ".join(f"{n} {v:.4g}" for n, v in s.items()),
                      flush=True)
            logger.check_finite(s, f"{k} (PPO iteration {i})", out)
        return mlirl.ppo_policy_step(policy, ref, reward_model, cfg, value_model=value,
                                     optimizer=ppo.make_optimizer(policy, value, ppo_cfg), demos=task.demos,
                                     ppo_cfg=ppo_cfg, iterations=args.ppo_iterations,
                                     batch_size=args.rollout_batch_size, generator=gen, progress=show)
    return step


def spin_round(args, policy, ref, demos, pairs, cfg, gen):
    """SPIN (MLIRL's baseline, nanoirl/dpo.py): the round's pairs, DPO against the last round's
    policy, no reward model. Returns (pairs, stats), as mlirl.mlirl_round does."""
    new = mlirl.sample_pairs(policy, demos, cfg, gen) if args.pairs == "mlirl" else pairs
    pairs = mlirl.cat_pairs(pairs, new) if cfg.accumulate_pairs and pairs is not None else new
    ref.load_state_dict(policy.state_dict())
    opt = torch.optim.AdamW(policy.parameters(), lr=args.dpo_lr, eps=1e-5, weight_decay=0.0)
    stats = dpo.spin_policy_step(policy, ref, pairs, cfg, optimizer=opt, epochs=args.dpo_epochs,
                                 batch_size=args.batch_size, generator=gen)
    return pairs, {**stats, "pairs": len(pairs["chosen"])}


def main(args):
    cli.fill_defaults(args, DEFAULTS)
    if args.sample_temperature is None:  # Eq. 11's negatives come from the policy the step produced
        args.sample_temperature = args.temperature
    device, dtype = cli.device_and_dtype(args)
    cli.seed_everything(args.seed)
    toy = args.model.startswith("toy-")  # the toy MDP (toy/task.py), or text
    Task = task_for(args)
    if not toy:  # text: TL;DR's preferences by default
        Task = functools.partial(Task, default_pairs=data.TLDR_PREFERENCES + ":validation[:2048]")
    task = load_task(Task, args, device, dtype)  # a bad data file or flag stops here, --out untouched
    check_flags(args, toy)
    out = run.prepare_out(args)
    cfg, ppo_cfg = configs(args, task)
    # the four models of the TL;DR PPO code: the policy, the KL anchor pi_ref (a copy, made before
    # either is wrapped for torchrun: FSDP2 models cannot be copied), the reward and value models
    # (from the SFT policy after round 0); under torchrun each is wrapped (nanoirl/dist.py)
    ref = copy.deepcopy(task.policy)
    policy, ref = dist.wrap(task.policy, args.fsdp), dist.wrap(ref, args.fsdp, trained=False)
    reward_model, value = (dist.wrap(task.new_scalar(), args.fsdp) for _ in range(2))
    gen = torch.Generator(device).manual_seed(args.seed)
    state = {"policy": policy, "ref": ref, "reward_model": reward_model, "value": value, "gen": gen}
    ckpt = resume.load_checkpoint(out, state, args) if args.resume else {"step": 0}
    start = ckpt["step"]  # rounds done, round 0 (SFT) included
    log = logger.Logger(out, args.rounds + 1, start)
    if start == 0:  # ---- round 0: SFT ----
        reward_init, pairs = sft_round(args, task, state, ckpt, out)
        log(0, task.evaluate(policy))
        start = 1
        resume.save_checkpoint(out, start, state, args, reward_init=reward_init, pairs=pairs)
    else:
        reward_init, pairs = ckpt["reward_init"], ckpt["pairs"]
    del ckpt  # its CPU copy of every model

    # ---- rounds 1..K: reward step (Eq. 11), then policy step (Eq. 9); or a SPIN round ----
    spin = args.policy_step == "spin"
    for k in range(start, args.rounds + 1):
        if spin:
            pairs, stats = spin_round(args, policy, ref, task.demos, pairs, cfg, gen)
        else:
            pairs, stats = mlirl.mlirl_round(policy, ref, reward_model, task.demos, pairs, cfg,
                                             policy_step(args, task, value, ppo_cfg, gen, out, k), reward_init,
                                             gen, new_pairs=None if args.pairs == "mlirl" else pairs)
        stats = {k_: v for k_, v in stats.items() if isinstance(v, (int, float))}
        acc = None if spin else task.reward_accuracy(reward_model, args.level)
        metrics = {**stats, **({"rm_accuracy_heldout": acc} if acc is not None else {}),
                   **task.evaluate(policy)}
        logger.check_finite(metrics, k, out)
        log(k, metrics)
        resume.save_checkpoint(out, k + 1, state, args, reward_init=reward_init, pairs=pairs)

    if isinstance(dist.unwrap(policy), GPT):
        task.save(policy, out / "policy")
        if not spin:  # SPIN trains no reward model
            task.save(reward_model, out / "reward_model")
    logger.plot_metrics(out, xlabel="round")
    logger.plot_metrics(out, ["rm_accuracy_heldout", "gold_reward", "win_rate"], "mlirl_fig2.png", "round")
    if (toy or args.toy_eval) and dist.is_main():  # the headline number: exact forward KL to the true expert, before and after ML-IRL
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        print(f"exact forward KL to the expert: SFT {rows[0]['fkl']:.4f} -> {'SPIN' if spin else 'ML-IRL'} {rows[-1]['fkl']:.4f} "
              f"(gold reward {rows[0]['gold_reward']:.4f} -> {rows[-1]['gold_reward']:.4f})")
    run.summary(out)


if __name__ == "__main__":
    with run.script():  # one-line errors, SIGTERM as Ctrl-C, the process group ended on every way out
        main(parser.parse_args())
