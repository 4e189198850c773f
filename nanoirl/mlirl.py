"""
Maximum-likelihood IRL (MLIRL Sec. 4-5): learn a reward whose KL-regularised optimal policy is
the maximum-likelihood fit of the demonstrations, alternating a policy step and a reward step.

  Eq. 5   max_theta L(theta) = E_{x~mu, y~pi_E}[log pi*_theta(y|x)]
          s.t. pi*_theta = argmax_pi E_{x~mu, y~pi}[r_theta(x,y)] - KL(pi(.|x) || pi_ref(.|x))
  Eq. 6   on demonstrations D:  L^(theta; D) = E_D[r_theta + log pi_ref]
                                    - E_{x~mu, y~pi*_theta}[r_theta - KL(pi*_theta || pi_ref)]
  Eq. 9   policy step (soft policy iteration):  pi_{k+1}(y|x) ∝ pi_ref(y|x) exp(r_theta_k(x,y))
  Eq. 10  reward gradient (Lemma 5.1):  grad L^ = E_D[grad r_theta] - E_{pi*_theta}[grad r_theta]
  Eq. 11  reward step:  min_theta -E_{(x,y)~D, y'~pi_{k+1}(.|x)} log sigma(r_theta(x,y) - r_theta(x,y'))
  Algorithm 1:  for k = 0..K-1: policy step (PPO or Best-of-N approximate Eq. 9), then the
                reward step (Eq. 11) on synthetic pairs (demonstration ≻ policy sample).

Here pi ∝ pi_ref exp(r/beta) (MLIRL Eq. 3; Eq. 5b and 9 are beta = 1). One `mlirl_round` is the
reward step then the policy step (Algorithm 1 shifted by half a round: with theta_0 = 0 its first
policy step returns pi_ref), as in the authors' code, whose choices are flags (the defaults, a
re-initialised reward on this round's pairs, a moving reference and beta = 1, are the scheme whose
exact rounds land on the demonstrations' distribution at once; toy.irl.scheme_table):
  accumulate_pairs   keep the pairs of every round (y' from pi_0, pi_1, ...)
  reinit_reward      restart the reward model from reward_init every round (GPT: SFT model + fresh head)
  moving_reference   anchor the policy step at the last round's policy: pi_{k+1} ∝ pi_k exp(r/beta)
The policy step, (policy, ref, reward_model, cfg) -> stats, is picked by a script's flag:
`ppo_policy_step` (Sec. 6.1), `bon_policy_step` (Best-of-N, Sec. 6.2), toy.exact.exact_policy_step.
RLignment's reward-model data (Init-SFT / Init-Demo / SFT-Demo) is `rlignment_pairs`; its reward
is the scalar model's logit, evaluated by Best-of-N (`best_of_n_gold`).
"""
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nanoirl import ppo
from nanoirl.model import upcast
from nanoirl.policy import micro_batches
from nanoirl.reward import (accuracy, bradley_terry_loss, demonstration_offset, discriminator_loss, scores,
                            shift_scores)
from nanoirl.sft import sft_step
from nanoirl.soft_pi import best_of_n


@dataclass
class MLIRLConfig:
    beta: float = 1.0                # KL coefficient of the policy step (Eq. 9; Table 4's 0.05: docs/results.md)
    level: str = "sequence"          # reward per response (Eq. 11) or per token (summed for pairs)
    accumulate_pairs: bool = False   # authors' code: pairs accumulate across rounds
    reinit_reward: bool = True       # authors' code: reward model re-initialised every round
    moving_reference: bool = True    # authors' code: the anchor is the previous round's policy
    sample_temperature: float = 0.7  # negatives y' ~ pi_k at the policy step's temperature (PPOConfig)
    response_length: int = 53        # tokens per sampled response
    sample_batch_size: int = 64      # prompts per sampling call
    rm_loss: str = "bt"              # "bt": Bradley-Terry, Eq. 11; "bce": logistic discriminator (RLignment)
    rm_epochs: int = 1               # reward-model epochs over the pairs (MLIRL Table 3)
    rm_batch_size: int = 64          # pairs per reward-model step (Table 3)
    rm_lr: float = 3e-6              # AdamW (eps 1e-5), cosine decay (Table 3)
    micro_batch_size: int = None     # pairs per forward/backward, gradients accumulate (None = rm_batch_size)
    autocast_dtype: str = None       # "bfloat16" on CUDA: forward passes under autocast (ppo.autocast)
    eos_id: int = 0
    pad_id: int = 1


def sequence_rewards(reward_model, prompts, prompt_mask, responses, cfg):
    """(B,) r(x, y): the logit read at the last valid token, or the sum of per-token logits."""
    h, valid = scores(reward_model, prompts, prompt_mask, responses, cfg.eos_id, cfg.level)
    h = upcast(h)  # fp32 from a ScalarGPT (model.fp32_linear); differences of bf16 rewards keep ~3 digits
    return h if cfg.level == "sequence" else torch.where(valid, h, 0.0).sum(1)


def make_pairs(prompts, prompt_mask, chosen, rejected):
    """Preference pairs chosen ≻ rejected on the same prompts (row i of each tensor)."""
    return {"prompts": prompts, "prompt_mask": prompt_mask, "chosen": chosen, "rejected": rejected}


def cat_pairs(a, b):
    """Two pair sets as one (accumulate_pairs): every tensor concatenated along the batch."""
    return {k: torch.cat([a[k], b[k]]) for k in a}


@torch.no_grad()
def sample_pairs(policy, demos, cfg, generator=None):
    """Eq. 11's synthetic pairs: each demonstration (x, y) ≻ a sample y' ~ pi(.|x)."""
    (p, m, y), bs = demos, cfg.sample_batch_size
    with ppo.autocast(p.device, cfg):
        ys = [policy.sample(p[i:i + bs], m[i:i + bs], cfg.response_length, cfg.eos_id, cfg.pad_id,
                            cfg.sample_temperature, generator=generator)[0] for i in range(0, len(p), bs)]
    return make_pairs(p, m, y, torch.cat(ys))


def rlignment_pairs(kind, demos, init_samples, sft_samples):
    """RLignment's reward-model data ("Dataset for RM" table): positives ≻ negatives, paired by
    prompt; the three arguments are (prompts, prompt_mask, responses) on the same prompts.
      init-sft   negatives from pi_init, positives from pi_SFT (homogeneous: the paper's choice)
      init-demo  negatives from pi_init, positives the demonstrations
      sft-demo   negatives from pi_SFT, positives the demonstrations"""
    pos, neg = {"init-sft": (sft_samples, init_samples), "init-demo": (demos, init_samples),
                "sft-demo": (demos, sft_samples)}[kind]
    return make_pairs(pos[0], pos[1], pos[2], neg[2])


def pair_loss(r_chosen, r_rejected, weight=None, kind="bt"):
    """Eq. 11 (kind "bt", reward.bradley_terry_loss) or the logistic discriminator loss, chosen
    labelled 1 (kind "bce", reward.discriminator_loss). A weight (any shape that broadcasts) gives
    the weighted mean: the exact expectation over all pairs on the toy (toy.exact.mlirl_exact)."""
    if weight is None:
        ones = torch.ones_like(r_chosen, dtype=torch.bool)
        return bradley_terry_loss(r_chosen, r_rejected) if kind == "bt" else \
            discriminator_loss(r_chosen, ones, r_rejected, ones)
    per_pair = -F.logsigmoid(r_chosen - r_rejected) if kind == "bt" else \
        -F.logsigmoid(r_chosen) - F.logsigmoid(-r_rejected)
    return (weight * per_pair).sum() / weight.sum()


def reward_step(reward_model, pairs, cfg, generator=None):
    """Train the reward model on the pairs: cfg.rm_epochs of shuffled minibatches, AdamW with
    cosine decay (MLIRL Table 3). Returns {"rm_loss", "rm_accuracy"} (means over the steps)."""
    opt = torch.optim.AdamW(reward_model.parameters(), lr=cfg.rm_lr, eps=1e-5)
    B, bs = len(pairs["chosen"]), cfg.rm_batch_size
    total = cfg.rm_epochs * math.ceil(B / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    stats = []
    for _ in range(cfg.rm_epochs):
        y = pairs["chosen"]
        perm = torch.randperm(B, generator=generator, device=ppo.draw_device(generator, y)).to(y.device)
        for start in range(0, B, bs):
            i = perm[start:start + bs]
            opt.zero_grad(set_to_none=True)
            r_c, r_r = [], []
            for j in micro_batches(len(i), cfg.micro_batch_size, i.device):  # Eq. 11 is a mean over pairs:
                j = i[j]                                                      # its gradient accumulates exactly
                p, m = pairs["prompts"][j], pairs["prompt_mask"][j]
                with ppo.autocast(p.device, cfg):  # forward passes only: the step comes after the block
                    r_c.append(sequence_rewards(reward_model, p, m, pairs["chosen"][j], cfg))
                    r_r.append(sequence_rewards(reward_model, p, m, pairs["rejected"][j], cfg))
                loss = pair_loss(r_c[-1], r_r[-1], kind=cfg.rm_loss) * len(j) / len(i)  # Eq. 11, this share
                loss.backward()
            opt.step()
            sched.step()
            r_c, r_r = torch.cat(r_c).detach(), torch.cat(r_r).detach()
            stats.append((pair_loss(r_c, r_r, kind=cfg.rm_loss).item(), accuracy(r_c, r_r)))
    return {"rm_loss": sum(s[0] for s in stats) / len(stats), "rm_accuracy": sum(s[1] for s in stats) / len(stats)}


def ppo_policy_step(policy, ref, reward_model, cfg, *, value_model, optimizer, demos, ppo_cfg, iterations,
                    batch_size, generator=None, progress=None, prompts=None):
    """`iterations` PPO updates on the reward model's logit (MLIRL Sec. 6.1, Table 4), beta = cfg.beta,
    on prompts drawn from demos = (prompts, prompt_mask, responses), or from prompts = (prompts,
    prompt_mask) if given (PPO needs no responses: e.g. prompts without demonstrations). The reward
    is read minus the demonstrations' mean score (reward.demonstration_offset: they score 0, as the
    TL;DR reward's bias makes the reference summaries score 0), and value_model, a copy of the
    reward model, starts with the same offset, V = h - offset, as the TL;DR critic subtracts the
    reward's bias: on the returns' scale, with no terminal TD error of -offset for GAE to spread
    over the last tokens. The lr decays linearly to 0 over the updates (ppo.anneal_lr).
    progress(i, stats), if given, sees every update's metrics (long runs show their progress)."""
    ppo_cfg = dataclasses.replace(ppo_cfg, beta=cfg.beta)
    prompts, prompt_mask = demos[:2] if prompts is None else prompts
    offset = demonstration_offset(reward_model, *demos, cfg.eos_id, cfg.level, batch_size=cfg.sample_batch_size,
                                  autocast=lambda: ppo.autocast(demos[0].device, cfg))
    reward_fn = ppo.reward_from_scorer(reward_model, cfg.level, cfg.eos_id, offset)
    shift_scores(value_model, offset)  # V = h - offset: the value model starts on the rewards' scale
    for it in range(iterations):
        i = torch.randint(len(prompts), (batch_size,), generator=generator,
                          device=ppo.draw_device(generator, prompts)).to(prompts.device)
        ro = ppo.rollout(policy, ref, value_model, prompts[i], prompt_mask[i], reward_fn, ppo_cfg, generator)
        ppo.anneal_lr(optimizer, ppo_cfg, it, iterations)  # linear decay over this round's updates
        stats = {**ppo.update(policy, value_model, optimizer, ro, ppo_cfg, generator), "reward_offset": offset}
        if progress:
            progress(it, stats)
    return stats


def bon_policy_step(policy, ref, reward_model, cfg, *, optimizer, prompts, prompt_mask, n, steps,
                    batch_size, temperature=1.0, generator=None):
    """Best-of-N policy step (RAFT; MLIRL Sec. 6.2): SFT steps on the best of n samples of the
    anchor `ref` under the reward model. It approximates Eq. 9 with an implicit beta:
    KL(best-of-n || ref) <= log n - (n - 1)/n."""
    score_fn = lambda p, m, y: sequence_rewards(reward_model, p, m, y, cfg)
    forward = lambda: ppo.autocast(prompts.device, cfg)
    for _ in range(steps):
        i = torch.randint(len(prompts), (batch_size,), generator=generator,
                          device=ppo.draw_device(generator, prompts)).to(prompts.device)
        with torch.no_grad(), forward():
            y, s = best_of_n(ref, prompts[i], prompt_mask[i], score_fn, n, cfg.response_length,
                             cfg.eos_id, cfg.pad_id, temperature, generator, batch_size=cfg.sample_batch_size)
        loss = sft_step(policy, optimizer, prompts[i], prompt_mask[i], y, cfg.eos_id,
                        micro_batch_size=cfg.micro_batch_size, autocast=forward)
    return {"sft_loss": loss, "bon_reward": s.mean().item()}


def mlirl_round(policy, ref, reward_model, demos, pairs, cfg, policy_step, reward_init=None,
                generator=None, new_pairs=None):
    """One round: pairs (demonstration ≻ sample of the current policy), reward step (Eq. 11),
    policy step (Eq. 9). `pairs` is the previous rounds' set (None at first); returns
    (pairs, stats). A script saves policy, reward_model, ref and pairs between rounds.
    new_pairs replaces the round's sampled pairs (RLignment's fixed data sets, rlignment_pairs)."""
    new = sample_pairs(policy, demos, cfg, generator) if new_pairs is None else new_pairs
    pairs = cat_pairs(pairs, new) if cfg.accumulate_pairs and pairs is not None else new
    if cfg.reinit_reward:  # reward_init: the reward model's initial state_dict (whole tensors)
        reward_model.load_state_dict(reward_init)
    stats = reward_step(reward_model, pairs, cfg, generator)
    if cfg.moving_reference:                   # pi_{k+1} ∝ pi_k exp(r / beta)
        ref.load_state_dict(policy.state_dict())
    return pairs, {**stats, **policy_step(policy, ref, reward_model, cfg), "pairs": len(pairs["chosen"])}


@torch.no_grad()
def best_of_n_gold(policy, reward_model, gold_fn, prompts, prompt_mask, ns, cfg, temperature=1.0,
                   generator=None):
    """Best-of-N evaluation: max(ns) samples per prompt; for each n, the best of the first n under
    the reward model, scored by gold_fn(prompts, mask, responses) -> (B,). Returns {n: mean gold}.
    Sampling and scoring take cfg.sample_batch_size of the B * max(ns) rows at a time."""
    n_max, bs = max(ns), cfg.sample_batch_size
    p, m = prompts.repeat_interleave(n_max, 0), prompt_mask.repeat_interleave(n_max, 0)
    r, gold = [], []
    for i in range(0, len(p), bs):
        p_i, m_i = p[i:i + bs], m[i:i + bs]
        with ppo.autocast(p.device, cfg):
            y, _ = policy.sample(p_i, m_i, cfg.response_length, cfg.eos_id, cfg.pad_id, temperature, generator=generator)
            r.append(sequence_rewards(reward_model, p_i, m_i, y, cfg))
        gold.append(gold_fn(p_i, m_i, y))
    r, gold = torch.cat(r).view(-1, n_max), torch.cat(gold).view(-1, n_max)
    return {n: gold.gather(1, r[:, :n].argmax(1, keepdim=True)).mean().item() for n in ns}
