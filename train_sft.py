"""
Supervised fine-tuning: behaviour cloning, which is forward-KL imitation of the demonstrations
(Sun24 Eq. 7 = Eq. 13-14; nanoirl/sft.py). Round 0 of ML-IRL and the starting point of AIRL.

    python train_sft.py                                    # toy MDP, full table, exact evaluation
    python train_sft.py --model toy-tabular --policy-class position   # a restricted class
    python train_sft.py --model toy-gpt --lr 3e-3          # the tiny GPT on the toy
    python train_sft.py --occupancy                        # Sun24 Eq. 8-12: position re-weighting
    python train_sft.py --model pythia-1b --data tldr.jsonl --out out/sft-1b
    python -m nanoirl.data fake.jsonl --n 8               # a dry run on a CPU, offline (docs/operations.md): fake data,
    python train_sft.py --model random:pythia-70m --data fake.jsonl --max-prompt-len 256 --eval-size 2 --steps 3 --batch-size 2 --out out/dry-sft

The run directory (--out) gets config.json, metrics.jsonl, metrics.png, ckpt.pt and, for a GPT,
policy/ (a Hugging Face GPT-NeoX checkpoint that the other scripts take as --model).
"""
import nanoirl.entry  # noqa: F401  (first: a Ctrl-C while torch is imported ends in one line)
import argparse

import torch

from nanoirl import cli, data, dist, logger, resume, run, sft
from nanoirl.model import GPT
from nanoirl.task import add_task_args, load_task
from toy.task import task_for

# The defaults that depend on --model: (toy table, toy GPT, text); text's are Pythia's at 1b.
DEFAULTS = {                  # toy table  toy GPT  text
    "lr":                       (0.1,       3e-3,    1e-5),
    "micro_batch_size":         (None,      None,    8),     # pythia-1b: 8 x 565 tokens of activations ~7 GB
}

parser = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
cli.add_common_args(parser, out="out/sft")
add_task_args(parser)
g = parser.add_argument_group("SFT")
g.add_argument("--steps", type=cli.positive_int, default=300, help="optimiser steps")
g.add_argument("--batch-size", type=cli.positive_int, default=32, help="demonstrations per step")
g.add_argument("--lr", type=cli.learning_rate, default=None, help="AdamW learning rate, decayed linearly to 0")
g.add_argument("--occupancy", action="store_true",
               help="minimise the occupancy-measure cross-entropy: token t of an n-token "
                    "response weighted n - t (Sun24 Eq. 12, index corrected; nanoirl/sft.py)")
g.add_argument("--eval-every", type=cli.positive_int, default=50, help="evaluate every this many steps")
cli.show_defaults(parser, DEFAULTS)


def main(args):
    cli.fill_defaults(args, DEFAULTS)
    device, dtype = cli.device_and_dtype(args)
    cli.seed_everything(args.seed)
    # the toy MDP (toy/task.py), text, or the toy as text evaluated exactly (toy/text.py)
    task = load_task(task_for(args), args, device, dtype)  # a bad data file or flag stops here, --out untouched
    out = run.prepare_out(args)
    policy = dist.wrap(task.policy, args.fsdp)  # itself; under torchrun DDP or FSDP2 (nanoirl/dist.py)
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr, eps=1e-5, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / args.steps)
    state = {"policy": policy, "opt": opt, "sched": sched}
    start = resume.load_checkpoint(out, state, args)["step"] if args.resume else 0
    log = logger.Logger(out, args.steps, start, args.log_every)
    demos = dict(zip(("prompts", "prompt_mask", "responses"), task.demos))
    batches = data.iterate_batches(demos, args.batch_size, args.seed, start)
    loss_fn = sft.occupancy_sft_loss if args.occupancy else sft.sft_loss

    for step in range(start, args.steps):
        b = next(batches)
        loss = sft.sft_step(policy, opt, b["prompts"], b["prompt_mask"], b["responses"], task.eos_id,
                            loss_fn, dist.per_rank(args.micro_batch_size), task.autocast)
        metrics = {"loss": loss}
        logger.check_finite(metrics, step, out)  # sft_step took no optimiser step on a bad loss
        sched.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            metrics.update(task.evaluate(policy))
            logger.check_finite(metrics, step, out)  # a finite loss can still take a step to NaN weights
        log(step, metrics)
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            resume.save_checkpoint(out, step + 1, state, args)

    if isinstance(dist.unwrap(policy), GPT):
        task.save(policy, out / "policy")
    logger.plot_metrics(out)
    print("final:", ", ".join(f"{k} {v:.4g}" for k, v in task.evaluate(policy).items()))
    run.summary(out)


if __name__ == "__main__":
    with run.script():  # one-line errors, SIGTERM as Ctrl-C, the process group ended on every way out
        main(parser.parse_args())
