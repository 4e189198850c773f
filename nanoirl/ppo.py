"""
PPO for token sequences, written once and used by every script: the scripts differ only in the
reward they pass in. It follows the TL;DR PPO code of "The N+ Implementation Details of RLHF with
PPO" (Huang et al. 2024), which MLIRL (Appendix A, Table 4) runs for its policy step.

    rollout = ppo.rollout(policy, ref, value_model, prompts, prompt_mask, reward_fn, cfg)
    stats   = ppo.update(policy, value_model, optimizer, rollout, cfg)

It only calls the interface of nanoirl/policy.py, so the same lines train a toy table and a GPT.
The objective is KL-regularised reward maximisation (MLIRL Eq. 3, Eq. 5b):
    max_pi  E_pi[ sum_t r_t ] - beta * KL(pi || pi_ref)   whose optimum is pi_ref exp(r/beta) / Z.

Implementation details (each names where it lives; 13 is ours, for memory):
 1. Everything after the first EOS is pad and is masked out of every sum and mean; a response
    with no EOS was truncated at max length (policy.sample -> policy.response_mask, `rollout`).
 2. Log-probs are recomputed by a forward pass at the sampling temperature (logits / T) for the
    policy and the reference alike, so that ratio = 1 on the first minibatch (`rollout`).
 3. A response with no EOS pays a penalty added to its reward, r(x, y) - 1 (`penalise_truncation`);
    `None` turns this off (the toy, where truncation is a legal ending). The TL;DR code replaces
    the score by -1 instead, a penalty only for scores above -1: once the policy's samples score
    below -1 (a Bradley-Terry reward on (demonstration ≻ sample) pairs puts them there, with the
    demonstrations at 0), not ending would pay. Added, the penalty lowers a response's score on
    every scale and offset the rewards take. Every learned sequence reward is read minus the
    demonstrations' mean score, so that they score 0 on average, as the TL;DR code shifts its
    reward model by its `bias` (reward.demonstration_offset; `reward_from_scorer`, train_airl.py).
 4. Per-token reward -beta (log pi - log pi_ref) on every valid token plus the task reward: a
    sequence score on the last valid token, or a score on every token (`rollout`).
 5. Values V(s_t) = value_model.state_scores(...)[:, t], zeroed after the last valid token, so
    GAE bootstraps 0 after the end (`rollout`, `gae`).
 6. GAE(gamma, lambda) by the backward recursion; returns = advantages + values (`gae`).
 7. Reward whitening off; advantages whitened over the valid tokens of the whole batch (`whiten`).
 8. Clipped surrogate loss max(-A r, -A clip(r, 1 - eps, 1 + eps)) (`update`).
 9. Clipped value loss 0.5 max((v - R)^2, (v_old + clip(v - v_old, +-eps_v) - R)^2), weight 0.1 (`update`).
10. Token losses are means over the valid tokens of a minibatch: each micro-batch adds its token
    sum divided by the minibatch's count (`token_sum`), so the gradient does not depend on the
    micro-batch size (the TL;DR code averages per micro-batch and GPU).
11. Several epochs of shuffled minibatches per rollout; micro-batches accumulate gradients, so
    a 512-sequence minibatch fits on one GPU (`update`).
12. Only forward passes run under (optional) bf16 autocast; losses are computed in fp32 or
    higher, and backward runs outside autocast, so fp32 master weights absorb lr 3e-6 (`autocast`).
13. The policy and the value model each take their own backward and AdamW step per minibatch:
    the joint loss's gradients, with half the peak memory of activations and gradients (`update`).
14. The learning rate decays linearly to 0 over the updates of one PPO phase: update i of n runs at
    lr (1 - i/n) (`anneal_lr`, called by the scripts before each update).
The rollout holds only (B, R) tensors; logits exist one forward chunk at a time.

Metrics (one dict per update):
  pg_loss             clipped surrogate policy loss (lower = the batch's advantages were exploited)
  v_loss              clipped value loss, before the 0.1 coefficient
  entropy             per-token entropy estimated on the rollout, mean of -log pi(y_t | s_t)
  approx_kl           KL(pi_old || pi_new) per token, estimator mean((ratio - 1) - log ratio)
  clipfrac            fraction of valid tokens whose ratio left [1 - eps, 1 + eps]
  explained_variance  1 - Var(returns - values) / Var(returns) on the rollout (1 = perfect critic)
  score               mean task reward per response (sum over tokens, with the EOS penalty)
  kl_ref              mean sequence KL to the reference, sum_t (log pi - log pi_ref) on samples
"""
import contextlib
from dataclasses import dataclass

import torch

from nanoirl.policy import micro_batches, response_mask
from nanoirl.reward import scores, token_rewards


@dataclass
class PPOConfig:  # defaults: MLIRL Appendix A Table 4 = the TL;DR PPO code at pythia-1b
    beta: float = 0.05               # KL penalty coefficient (per-token reward -beta * kl)
    gamma: float = 1.0               # discount factor
    lam: float = 0.95                # GAE lambda
    lr: float = 3e-6                 # AdamW learning rate, decayed linearly to 0 (anneal_lr)
    eps: float = 1e-5                # AdamW epsilon
    weight_decay: float = 0.01       # AdamW weight decay (torch's default, as in the TL;DR code)
    num_epochs: int = 4              # PPO epochs over each rollout
    num_minibatches: int = 1         # minibatches per epoch (one optimizer step each)
    micro_batch_size: int = None     # sequences per forward/backward (None = whole minibatch)
    forward_batch_size: int = 64     # sequences per no-grad rollout chunk (sampling, scoring)
    cliprange: float = 0.2           # policy ratio clip
    cliprange_value: float = 0.2     # value clip around the rollout's values
    vf_coef: float = 0.1             # value loss coefficient
    temperature: float = 0.7         # sampling temperature; log-probs use logits / temperature
    response_length: int = 53        # new tokens per response
    missing_eos_penalty: float = -1.0  # added to the score of a response with no EOS (None = off)
    eos_id: int = 0                  # Pythia: <|endoftext|>; toy: "."
    pad_id: int = 1                  # Pythia: <|padding|>; toy: "_"
    autocast_dtype: str = None       # "bfloat16" on CUDA: autocast forward passes, fp32 weights


def autocast(device, cfg):
    """bf16 autocast for forward passes when cfg.autocast_dtype is set (PPOConfig, MLIRLConfig).
    Such a block must hold no optimizer step: autocast caches the bf16 copy of each fp32 weight
    until the outermost block ends, so a step inside it would leave forward passes on stale copies."""
    if cfg.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, cfg.autocast_dtype))


def _up(x):
    """At least fp32 (keeps fp64 on the toy, where the tests compare with exact numbers)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def draw_device(generator, x):
    """Where a random draw handed `generator` must run: on the generator's own device (torch
    rejects a CUDA generator in a CPU op and vice versa), or on x's device without a generator."""
    return x.device if generator is None else generator.device


def masked_mean(x, mask):
    return torch.where(mask, x, 0.0).sum() / mask.sum().clamp_min(1)


def whiten(x, mask, eps=1e-8):
    """(x - mean) / std over the valid entries (unbiased variance, as TL;DR); 0 elsewhere."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask) * mask.sum() / (mask.sum() - 1).clamp_min(1)
    return torch.where(mask, (x - mean) * torch.rsqrt(var + eps), 0.0)


def gae(rewards, values, mask, gamma, lam):
    """GAE-Lambda (Schulman et al. 2016) over the valid tokens of each response: (B, R) each.
    delta_t = r_t + gamma V(s_{t+1}) - V(s_t),  A_t = delta_t + gamma lam A_{t+1},  with
    V = 0 and r = 0 after the last valid token (bootstrap 0: the episode ended or was cut)."""
    rewards, values = torch.where(mask, rewards, 0.0), torch.where(mask, values, 0.0)
    advantages, last = torch.zeros_like(rewards), 0.0
    R = rewards.shape[1]
    for t in reversed(range(R)):  # the next three lines implement GAE-Lambda
        next_values = values[:, t + 1] if t + 1 < R else 0.0
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last = advantages[:, t] = delta + gamma * lam * last
    return advantages, advantages + values


def reward_from_scorer(scorer, level="sequence", eos_id=0, offset=0.0):
    """reward_fn for `rollout` from a scalar model: its logit minus `offset` read at the sequence
    level (one score on the last valid token) or at the token level (a score on every token).
    (B, R). offset: reward.demonstration_offset, so that demonstrations score 0 (detail 3)."""
    def reward_fn(prompts, prompt_mask, responses):
        h, _ = scores(scorer, prompts, prompt_mask, responses, eos_id, level)
        return token_rewards(_up(h) - offset, responses, eos_id, level)
    return reward_fn


def make_optimizer(policy, value_model, cfg):
    """One AdamW over the policy and the value model: loss = pg_loss + vf_coef * v_loss."""
    params = list(policy.parameters()) + list(value_model.parameters())
    return torch.optim.AdamW(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)


def anneal_lr(optimizer, cfg, iteration, iterations):
    """Detail 14: before update `iteration` (0-based) of `iterations`, lr = cfg.lr (1 - iteration /
    iterations), the TL;DR code's linear decay. Set from the update's index, so a resumed run
    continues on the same schedule."""
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * (1 - iteration / iterations)


def penalise_truncation(task, responses, eos_id, penalty):
    """Detail 3: the (B, R) task rewards with `penalty` added on the last token of each response
    that has no EOS, so that its score is r(x, y) + penalty: below what it would be, whatever the
    rewards' scale and offset (a score *replaced* by the penalty pays whenever r < penalty)."""
    truncated = ~(responses == eos_id).any(dim=1)                    # (B,)
    task = task.clone()
    task[:, -1] += torch.where(truncated, penalty, 0.0).to(task.dtype)  # a truncated response's last token
    return task


@torch.no_grad()
def rollout(policy, ref, value_model, prompts, prompt_mask, reward_fn, cfg, generator=None):
    """Sample one response per prompt and compute everything `update` needs: a dict of (B, ...)
    tensors plus the float metrics score, kl_ref and entropy. reward_fn(prompts, prompt_mask,
    responses) -> (B, R) task reward per token (see reward_from_scorer); R = cfg.response_length."""
    cols = {k: [] for k in ("responses", "logprobs", "ref_logprobs", "values", "task")}
    for i in range(0, len(prompts), cfg.forward_batch_size):  # one chunk of logits at a time
        p, pm = prompts[i:i + cfg.forward_batch_size], prompt_mask[i:i + cfg.forward_batch_size]
        with autocast(p.device, cfg):
            y, _ = policy.sample(p, pm, cfg.response_length, cfg.eos_id, cfg.pad_id,
                                 cfg.temperature, generator=generator)
            chunk = {"responses": y,
                     "logprobs": _up(policy.logprobs(p, pm, y, cfg.temperature)),  # detail 2
                     "ref_logprobs": _up(ref.logprobs(p, pm, y, cfg.temperature)),
                     "values": _up(value_model.state_scores(p, pm, y)[:, :-1]),  # V(s_t), detail 5
                     "task": _up(reward_fn(p, pm, y))}
        for k, v in chunk.items():
            cols[k].append(v)
    ro = {k: torch.cat(v) for k, v in cols.items()}
    y, mask = ro["responses"], response_mask(ro["responses"], cfg.eos_id)
    task = torch.where(mask, ro["task"], 0.0)
    if cfg.missing_eos_penalty is not None:  # detail 3
        task = penalise_truncation(task, y, cfg.eos_id, cfg.missing_eos_penalty)
    kl = torch.where(mask, ro["logprobs"] - ro["ref_logprobs"], 0.0)       # log pi - log pi_ref
    rewards = task - cfg.beta * kl                                          # detail 4
    advantages, returns = gae(rewards, ro["values"], mask, cfg.gamma, cfg.lam)  # detail 6
    ro.update(prompts=prompts, prompt_mask=prompt_mask, mask=mask, rewards=rewards,
              advantages=whiten(advantages, mask), returns=returns,         # detail 7
              values=torch.where(mask, ro["values"], 0.0))
    res = torch.where(mask, returns - ro["values"], 0.0)
    var = lambda x: masked_mean((x - masked_mean(x, mask)) ** 2, mask)
    ro["stats"] = {"score": task.sum(1).mean().item(), "kl_ref": kl.sum(1).mean().item(),
                   "entropy": -masked_mean(ro["logprobs"], mask).item(),
                   "explained_variance": (1 - var(res) / var(returns).clamp_min(1e-12)).item()}
    return ro


def update(policy, value_model, optimizer, ro, cfg, generator=None):
    """cfg.num_epochs passes of shuffled minibatches over one rollout; returns the metric dict.
    Detail 13: the policy loss depends only on the policy's weights and the value loss only on the
    value model's, so each minibatch takes two passes, the policy's backward and step, then the
    value model's: the same gradients and AdamW updates as one backward of pg_loss + vf_coef *
    v_loss, while memory holds one model's activations and gradients at a time, not both."""
    B = len(ro["responses"])
    mb_size = B // cfg.num_minibatches
    metrics = {"pg_loss": [], "v_loss": [], "approx_kl": [], "clipfrac": []}  # one entry per minibatch
    for _ in range(cfg.num_epochs):
        y = ro["responses"]
        b_inds = torch.randperm(B, generator=generator, device=draw_device(generator, y)).to(y.device)
        for start in range(0, mb_size * cfg.num_minibatches, mb_size):
            mb_inds = b_inds[start:start + mb_size]
            n_valid = ro["mask"][mb_inds].sum().clamp_min(1)  # detail 10: the minibatch's valid tokens
            for model, loss_fn in ((policy, policy_loss), (value_model, value_loss)):  # detail 13
                optimizer.zero_grad(set_to_none=True)
                sums = {}
                for j in micro_batches(mb_size, cfg.micro_batch_size, y.device):  # detail 11
                    loss, stats = loss_fn(model, ro, mb_inds[j], n_valid, cfg)
                    loss.backward()
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + v
                for k, v in sums.items():  # the minibatch's token means
                    metrics[k].append(v)
                optimizer.step()
    return {**ro["stats"], **{k: sum(v) / len(v) for k, v in metrics.items()}}


def token_sum(x, mask, n_valid):
    """Detail 10: the sum of x over the valid tokens of some rows of a minibatch, divided by the
    minibatch's number of valid tokens: summed over its micro-batches, the minibatch's token mean,
    whatever the micro-batch size."""
    return torch.where(mask, x, 0.0).sum() / n_valid


def policy_loss(policy, ro, i, n_valid, cfg):
    """Detail 8 on the rollout rows i: (clipped surrogate loss, its float metrics), each a share
    of the minibatch's token mean (token_sum)."""
    mask, adv = ro["mask"][i], ro["advantages"][i]
    with autocast(mask.device, cfg):  # detail 12: autocast forward passes only
        new_logprobs = _up(policy.logprobs(ro["prompts"][i], ro["prompt_mask"][i], ro["responses"][i],
                                           cfg.temperature))
    logratio = new_logprobs - ro["logprobs"][i]
    ratio = torch.exp(logratio)
    pg_losses = -adv * ratio
    pg_losses2 = -adv * torch.clamp(ratio, 1 - cfg.cliprange, 1 + cfg.cliprange)
    pg_loss = token_sum(torch.max(pg_losses, pg_losses2), mask, n_valid)
    with torch.no_grad():
        stats = {"pg_loss": pg_loss.item(), "approx_kl": token_sum((ratio - 1) - logratio, mask, n_valid).item(),
                 "clipfrac": token_sum(((ratio - 1).abs() > cfg.cliprange).to(ratio.dtype), mask, n_valid).item()}
    return pg_loss, stats


def value_loss(value_model, ro, i, n_valid, cfg):
    """Detail 9 on the rollout rows i: (vf_coef * clipped value loss, {"v_loss": without vf_coef})."""
    mask, ret, v_old = ro["mask"][i], ro["returns"][i], ro["values"][i]
    with autocast(mask.device, cfg):
        vpred = _up(value_model.state_scores(ro["prompts"][i], ro["prompt_mask"][i], ro["responses"][i])[:, :-1])
    v_clipped = v_old + torch.clamp(vpred - v_old, -cfg.cliprange_value, cfg.cliprange_value)
    v_loss = 0.5 * token_sum(torch.max((vpred - ret) ** 2, (v_clipped - ret) ** 2), mask, n_valid)
    return cfg.vf_coef * v_loss, {"v_loss": v_loss.item()}
