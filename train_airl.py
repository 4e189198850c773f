"""
Adversarial imitation: a discriminator tells demonstrations from policy samples, and PPO trains
the policy on a reward read from its logit h (Sun24 Sec. 3.4.3-3.4.4 and Appendix B;
nanoirl/airl.py, gail.py, fdiv.py). The divergence picks the reward:

  reverse-kl  AIRL    r = h = log D - log(1 - D)         mode-seeking      Sun24 Eq. (17), (19)
  js          GAIL    r = -log(1 - D) - log 2 (or log D) in between        Eq. (21)-(23)
  forward-kl  FAIRL   r = e^h - 1 (or published -h e^h)  mass-covering     App. B
  alpha       alpha-IRL  r = (e^((1-a) h) - 1) / (1 - a)                   App. B, Eq. (28)-(30)

    python train_airl.py                                  # toy MDP, full table, reverse KL
    python train_airl.py --policy-class position --divergence js --level token
    python train_airl.py --model toy-gpt --divergence forward-kl
    python train_airl.py --model out/sft/policy --data tldr.jsonl --out out/airl-1b

Each step: sample a rollout from the policy (rewards from the current discriminator), take
--disc-steps discriminator steps on demonstrations (label 1) vs those samples (label 0), then a
PPO update. On the toy every --eval-every steps adds the exact divergences to the expert.
"""
import nanoirl.entry  # noqa: F401  (first: a Ctrl-C while torch is imported ends in one line)
import argparse
import copy
import math

import torch

from nanoirl import cli, data, dist, fdiv, gail, logger, ppo, resume, reward, run
from nanoirl.model import GPT, upcast
from nanoirl.task import add_task_args, load_task
from toy.task import task_for


def alpha_arg(value):
    """--alpha: finite, and not 0 or 1, where the alpha-divergence's formulas divide by zero."""
    alpha = float(value)  # argparse turns a ValueError into 'invalid alpha_arg value'
    if not math.isfinite(alpha) or alpha in (0, 1):
        raise argparse.ArgumentTypeError(f"expected a finite alpha other than 0 and 1 (the reverse and "
                                         f"forward KL: use their --divergence), got {value!r}")
    return alpha


# The defaults that depend on --model: (toy table, toy GPT, text); text's are the TL;DR PPO code's.
DEFAULTS = {                  # toy table  toy GPT  text
    "disc_lr":                  (0.1,       1e-3,    1e-5),
    "rollout_batch_size":       (256,       256,     64),
    "ppo_lr":                   (0.05,      1e-4,    3e-6),
    "num_minibatches":          (4,         4,       1),
    "temperature":              (1.0,       1.0,     0.7),   # the toy is evaluated exactly at 1
    "micro_batch_size":         (None,      None,    8),     # pythia-1b: 8 x 565 tokens of activations ~7 GB
}

parser = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
cli.add_common_args(parser, out="out/airl")
add_task_args(parser)
g = parser.add_argument_group("adversarial imitation")
g.add_argument("--divergence", default="reverse-kl", choices=["reverse-kl", "js", "forward-kl", "alpha"],
               help="which divergence the reward minimises (Sun24 Appendix B)")
g.add_argument("--alpha", type=alpha_arg, default=0.5, help="alpha of the alpha-divergence (not 0 or 1)")
g.add_argument("--level", default="sequence", choices=["sequence", "token"],
               help="discriminator per response (trajectory, Eq. 19-20) or per token (state-action, Eq. 17-18)")
g.add_argument("--gail-reward", default="-log(1-D)-log2", choices=["-log(1-D)-log2", "-log(1-D)", "log D"],
               help="js only: the GAIL reward. Centred at D = 1/2, -log(1-D)-log2 has the JS gradient at the "
                    "token level too; the uncentred -log(1-D) pays every extra token; log D is the non-saturating "
                    "convention (nanoirl/gail.py explains the difference)")
g.add_argument("--fairl-reward", default="gradient", choices=["gradient", "published"],
               help="forward-kl only: e^h - 1, whose gradient is the forward KL's, or the published -h e^h")
g.add_argument("--logit-clip", type=cli.positive_float, default=20.0,
               help="the discriminator logit h is clipped before its reward is read, so that the reward's "
                    "exponent stays in [-c, c]: h to [-c, c], and to [-c, c] / |1 - alpha| for alpha-IRL when "
                    "|1 - alpha| > 1 (e^x overflows fp32 at x > 88; c = 20 is D within 2e-9 of 0 or 1); "
                    "reward_clipfrac logs how often")
g.add_argument("--steps", type=cli.positive_int, default=150, help="iterations (rollout, discriminator, PPO)")
g.add_argument("--disc-steps", type=cli.positive_int, default=5, help="discriminator steps per iteration")
g.add_argument("--disc-lr", type=cli.learning_rate, default=None, help="discriminator AdamW lr")
g.add_argument("--eval-every", type=cli.positive_int, default=25, help="evaluate every this many iterations")
g = parser.add_argument_group("PPO policy step (nanoirl/ppo.py)")
g.add_argument("--rollout-batch-size", type=cli.positive_int, default=None, help="prompts per rollout")
g.add_argument("--ppo-lr", type=cli.learning_rate, default=None, help="AdamW lr")
g.add_argument("--beta", type=cli.nonnegative_float, default=0.0,
               help="KL penalty to the initial policy; 0 minimises the divergence itself (TL;DR PPO uses 0.05)")
g.add_argument("--num-minibatches", type=cli.positive_int, default=None, help="minibatches per epoch")
g.add_argument("--temperature", type=cli.positive_float, default=None, help="sampling temperature (of PPO, and of the text evaluation)")
cli.show_defaults(parser, DEFAULTS)


def reward_map(args):
    """The divergence's reward as a function of the discriminator logit h."""
    if args.divergence == "js" and args.gail_reward != "-log(1-D)-log2":
        return lambda h: gail.gail_reward(h, args.gail_reward)
    if args.divergence == "forward-kl" and args.fairl_reward == "published":
        return fdiv.fairl_reward
    kind = {"reverse-kl": "rkl", "js": "js", "forward-kl": "fkl", "alpha": "alpha"}[args.divergence]
    return lambda h: fdiv.f_reward(h, kind, args.alpha)


def logit_bound(args):
    """b such that h in [-b, b] keeps the reward's exponent in [-c, c], c = --logit-clip: e^h for
    the forward KL, e^((1 - a) h) for alpha-IRL (at a = -10, h = 20 would be e^220: inf in fp32)."""
    k = abs(1 - args.alpha) if args.divergence == "alpha" else 1.0
    return args.logit_clip / max(1.0, k)


def main(args):
    cli.fill_defaults(args, DEFAULTS)
    device, dtype = cli.device_and_dtype(args)
    cli.seed_everything(args.seed)
    toy = args.model.startswith("toy-")  # the toy MDP (toy/task.py) or text
    task = load_task(task_for(args), args, device, dtype)  # a bad data file or flag stops here, --out untouched
    policy = task.policy
    cfg = ppo.PPOConfig(
        beta=args.beta, lr=args.ppo_lr, num_minibatches=args.num_minibatches,
        micro_batch_size=dist.per_rank(args.micro_batch_size), temperature=args.temperature,
        response_length=task.response_len, eos_id=task.eos_id, pad_id=task.pad_id,
        missing_eos_penalty=task.missing_eos_penalty, forward_batch_size=args.forward_batch_size,
        autocast_dtype=task.autocast_dtype)
    cli.check_minibatches(cfg.num_minibatches, args.rollout_batch_size)
    out = run.prepare_out(args)
    ref, disc, value = copy.deepcopy(policy), task.new_scalar(), task.new_scalar()
    # itself; under torchrun Parallel: DDP or FSDP2 (nanoirl/dist.py); the frozen reference is sharded by --fsdp
    policy, disc, value = (dist.wrap(m, args.fsdp) for m in (policy, disc, value))
    ref = dist.wrap(ref, args.fsdp, trained=False)
    disc_opt = torch.optim.AdamW(disc.parameters(), lr=args.disc_lr, eps=1e-5)
    opt = ppo.make_optimizer(policy, value, cfg)
    gen = torch.Generator(device).manual_seed(args.seed)
    state = {"policy": policy, "value": value, "disc": disc, "opt": opt, "disc_opt": disc_opt, "gen": gen}
    start = resume.load_checkpoint(out, state, args)["step"] if args.resume else 0
    log = logger.Logger(out, args.steps, start, args.log_every)
    demos = dict(zip(("prompts", "prompt_mask", "responses"), task.demos))
    batches = data.iterate_batches(demos, args.rollout_batch_size, args.seed, start)
    to_reward, bound = reward_map(args), logit_bound(args)
    clipped = []  # (scores clipped, scores) of each rollout chunk

    def read(h):  # the reward of logits h, clipped to +-bound: e^h and e^((1-a)h) overflow beyond
        h = h.double() if toy else upcast(h)  # text: bf16 -> fp32, fp64 stays
        return to_reward(h.clamp(-bound, bound))

    def reward_fn(p, m, y):  # (B, R) rewards on the tokens PPO sees, demonstrations at 0 on average
        h, valid = reward.scores(disc, p, m, y, task.eos_id, args.level)
        clipped.append(((h.abs() > bound)[valid].sum().item(), valid.sum().item()))
        return reward.token_rewards(torch.where(valid, read(h), 0.0) - offset, y, task.eos_id, args.level)

    for step in range(start, args.steps):
        b = next(batches)
        offset = reward.demonstration_offset(disc, b["prompts"], b["prompt_mask"], b["responses"], task.eos_id,
                                             args.level, read, batch_size=args.forward_batch_size,
                                             autocast=task.autocast)  # reward.py: the scale
        clipped.clear()
        ro = ppo.rollout(policy, ref, value, b["prompts"], b["prompt_mask"], reward_fn, cfg, gen)
        n_clipped, n_read = sum(c for c, _ in clipped), sum(n for _, n in clipped)
        ro["stats"].update(reward_offset=offset, reward_clipfrac=n_clipped / n_read)
        for _ in range(args.disc_steps):  # Sun24 Eq. (18) / (20): expert label 1, policy label 0
            d_loss, d_acc = reward.discriminator_step(disc, disc_opt, b["prompts"], b["prompt_mask"], b["responses"],
                                                      ro["responses"], task.eos_id, args.level,
                                                      dist.per_rank(args.micro_batch_size), task.autocast)
            logger.check_finite({"disc_loss": d_loss}, step, out)  # a NaN stops the run before any step
        ppo.anneal_lr(opt, cfg, step, args.steps)  # linear decay to 0 over the run's updates
        metrics = {"disc_loss": d_loss, "disc_accuracy": d_acc, **ppo.update(policy, value, opt, ro, cfg, gen)}
        logger.check_finite(metrics, step, out)  # before evaluating: sampling from NaN weights fails
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            metrics.update(task.evaluate(policy))
            logger.check_finite(metrics, step, out)
        log(step, metrics)
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            resume.save_checkpoint(out, step + 1, state, args)

    if isinstance(dist.unwrap(policy), GPT):
        task.save(policy, out / "policy")
        task.save(disc, out / "discriminator")
    logger.plot_metrics(out)
    print("final:", ", ".join(f"{k} {v:.4g}" for k, v in task.evaluate(policy).items()))
    run.summary(out)


if __name__ == "__main__":
    with run.script():  # one-line errors, SIGTERM as Ctrl-C, the process group ended on every way out
        main(parser.parse_args())
