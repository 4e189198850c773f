"""
The toy's task (--model toy-tabular or toy-gpt): the interface of nanoirl/task.py on the toy MDP,
where every policy is evaluated exactly by enumerating all its responses.

  task.policy                 a lookup table (--policy-class) or the tiny GPT, float64 by default
  task.demos                  --n-demos demonstrations of the expert (seeded by --seed)
  task.new_scalar()           a fresh table on toy-tabular; on the tiny GPT its transformer plus a new head
  task.evaluate(policy)       exact: divergences to the expert, gold reward, modes, win rate against
                              the demonstrations (toy/metrics.py)
  task.reward_accuracy(rm)    exact pair accuracy, pairs labelled by the gold reward
  task.mdp                    the MDP itself, for the exact soft-pi step (toy/exact.py)

A script picks its task by --model with `task_for(args)` (below).
"""
import contextlib
from pathlib import Path

import torch

from nanoirl import dist, run
from nanoirl.model import GPT
from nanoirl.cli import RunError
from nanoirl.task import TextTask, scalar_from_policy
from toy import metrics
from toy.exact import all_rewards
from toy.gpt import tiny_gpt
from toy.mdp import ToyMDP
from toy.tabular import TabularPolicy, TabularScalar
from toy.text import ToyTextTask


class ToyTask:
    def __init__(self, args, device, dtype):
        # a text flag on the toy would be ignored: say so instead
        given = [f for f in ("data", "eval_pairs", "gold_model", "reward_init", "toy_eval", "toy_tokens_only")
                 if getattr(args, f, None)]
        if given:
            raise RunError(f"--{given[0].replace('_', '-')} is for text models; --model {args.model} "
                           "is the toy MDP, whose expert and gold reward are built in")
        if args.dtype == "bfloat16":
            raise RunError(f"--dtype bfloat16 is for text models; --model {args.model} is evaluated exactly, "
                           "in float64 (auto) or float32")
        self.args, self.mdp = args, ToyMDP()
        torch.set_num_threads(1)  # toy tensors are tiny: a second thread only adds overhead (~10x)
        self.dtype = torch.float64 if args.dtype == "auto" else dtype  # exact numbers on the toy
        self.autocast_dtype = None
        self.eos_id, self.pad_id, self.response_len = self.mdp.eos_id, self.mdp.pad_id, self.mdp.T
        self.missing_eos_penalty = None  # the horizon ends a response: T letters with no EOS is one
        g = torch.Generator().manual_seed(args.seed)
        self.demos = self.mdp.demonstrations(args.n_demos, g)
        self.demo_logd = self.mdp.empirical_logprob(self.demos[0], self.demos[2])
        if args.model == "toy-tabular":
            self.policy = TabularPolicy(self.mdp, args.policy_class, dtype=self.dtype)
        else:
            self.policy = tiny_gpt(self.mdp, seed=args.seed, dtype=self.dtype)


    def autocast(self):
        return contextlib.nullcontext()

    def save(self, model, directory):
        run.save_model_dir(model, directory, Path(self.args.out))

    def new_scalar(self):
        if isinstance(self.policy, GPT):
            return scalar_from_policy(self.policy)
        return TabularScalar(self.mdp, dtype=self.dtype)

    @torch.no_grad()
    def evaluate(self, policy):
        with dist.full_weights(policy) as model:  # FSDP2: whole on every rank; every rank evaluates
            logd = self.mdp.trajectory_logprobs(model).double()  # a float32 policy is judged in float64 too
        return {**metrics.summary(self.mdp, logd, self.demo_logd),
                "win_rate": metrics.win_rate(self.mdp, logd, self.demo_logd).mean().item()}

    @torch.no_grad()
    def reward_accuracy(self, reward_model, level="sequence"):
        with dist.full_weights(reward_model) as model:
            return metrics.pair_accuracy(self.mdp, all_rewards(self.mdp, model, level)).mean().item()


def task_for(args):
    """The task class --model picks: ToyTask for toy-tabular and toy-gpt; on text TextTask, or
    ToyTextTask (toy/text.py) with --toy-eval, the toy's data as text, evaluated exactly."""
    if args.model.startswith("toy-"):
        return ToyTask
    if args.toy_tokens_only and not args.toy_eval:
        raise RunError("--toy-tokens-only masks the policy to the toy's tokens: it needs --toy-eval DIR")
    return ToyTextTask if args.toy_eval else TextTask
