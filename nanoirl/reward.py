"""
Reward models and discriminators: one scalar model (toy.tabular.TabularScalar or
nanoirl.model.ScalarGPT), read at two levels, trained with one of two losses.

Levels (RLignment: "the reward model is the discriminator's logit"):
  "sequence"  one score per response, h(x, y), read at the last valid token; the policy
              receives it on that token, zero elsewhere (as in TL;DR PPO)
  "token"     one score per state-action pair, h(s_t, a_t) = state score of s_{t+1}; the policy
              receives it on every token (Sun24 Eq. 17-18 are written at this level)

Losses:
  discriminator_loss   expert label 1, policy label 0 (Sun24 Eq. 18 / 20, negated to minimise):
                       -E_exp[log D] - E_pi[log(1 - D)],  D = sigmoid(h)
  bradley_terry_loss   -E[log sigmoid(r(chosen) - r(rejected))]          MLIRL Eq. (11)
discriminator_step is one optimiser step of discriminator_loss, in micro-batches (train_airl.py).

The scale of a learned reward (demonstration_offset). Bradley-Terry rewards are defined up to a
constant (the loss is shift-invariant), and a discriminator's logit sits wherever the last step
left it; a sequence-level reward of either kind is therefore read minus the mean score of the
demonstrations, so that they score 0 on average, as the TL;DR PPO code's reward `bias` does. A
constant changes nothing else at the sequence level (one reward per response): the -1 of a
response with no EOS is added to its score (ppo.py, detail 3), a penalty whatever the offset. The
value model that starts as the reward model starts with the same offset, V = h - offset
(`shift_scores`; mlirl.ppo_policy_step), so that its values are on the scale of the returns.
At the token level the offset stays 0: a constant per token is a length bonus that changes the
divergence's gradient, and the f-rewards of fdiv.py are already 0 where D = 1/2.
"""
import contextlib
import math

import torch
import torch.nn.functional as F

from nanoirl.model import upcast
from nanoirl.policy import micro_batches, response_mask, sequence_lengths


def scores(scorer, prompts, prompt_mask, responses, eos_id, level):
    """Scores h and the mask of the entries they are valid on.
    sequence: (B,) h(x, y) and an all-True (B,) mask; token: (B, R) h(s_t, a_t) and its mask."""
    out = scorer.state_scores(prompts, prompt_mask, responses)             # (B, R + 1)
    if level == "sequence":
        n = sequence_lengths(responses, eos_id)
        return out.gather(1, n[:, None]).squeeze(1), torch.ones_like(n, dtype=torch.bool)
    if level == "token":
        return out[:, 1:], response_mask(responses, eos_id)
    raise ValueError(f"unknown reward level {level!r}: use 'sequence' or 'token'")


def token_rewards(h, responses, eos_id, level):
    """Place rewards computed from scores on the tokens PPO sees: (B, R).
    sequence level puts h on the last valid token; token level keeps h on valid tokens."""
    mask = response_mask(responses, eos_id)
    if level == "token":
        return torch.where(mask, h, 0.0)
    last = sequence_lengths(responses, eos_id) - 1
    return torch.zeros_like(mask, dtype=h.dtype).scatter(1, last[:, None], h[:, None])


def discriminator_loss(h_expert, mask_expert, h_policy, mask_policy):
    """-E_exp[log sigmoid(h)] - E_pi[log(1 - sigmoid(h))], each mean over its valid entries.
    log(1 - sigmoid(h)) = logsigmoid(-h), which stays finite for large h."""
    e = -F.logsigmoid(h_expert)[mask_expert].mean()
    p = -F.logsigmoid(-h_policy)[mask_policy].mean()
    return e + p


def discriminator_step(disc, optimizer, prompts, prompt_mask, expert, samples, eos_id, level,
                       micro_batch_size=None, autocast=contextlib.nullcontext):
    """One optimiser step of discriminator_loss on expert responses (label 1) and policy samples
    (label 0) for the same prompts, in micro-batches of rows whose gradients accumulate, each
    weighted by its share of the rows: the whole batch's gradient exactly at the sequence level
    (at the token level each micro-batch averages over its own tokens). Returns (loss, accuracy)
    as floats; a non-finite loss takes no step."""
    B = len(expert)
    optimizer.zero_grad(set_to_none=True)
    loss_sum, acc_sum = 0.0, 0.0
    for i in micro_batches(B, micro_batch_size, expert.device):
        p, m = prompts[i], prompt_mask[i]
        with autocast():
            h_e, m_e = scores(disc, p, m, expert[i], eos_id, level)
            h_p, m_p = scores(disc, p, m, samples[i], eos_id, level)
        h_e, h_p = upcast(h_e), upcast(h_p)
        loss = discriminator_loss(h_e, m_e, h_p, m_p) * len(p) / B  # this micro-batch's share
        loss.backward()
        loss_sum += loss.item()
        acc_sum += ((h_e > 0)[m_e].double().mean() + (h_p < 0)[m_p].double().mean()).item() / 2 * len(p) / B
    if not math.isfinite(loss_sum):
        return loss_sum, float("nan")
    optimizer.step()
    return loss_sum, acc_sum


@torch.no_grad()
def demonstration_offset(scorer, prompts, prompt_mask, demos, eos_id, level, reward=lambda h: h,
                         batch_size=64, autocast=contextlib.nullcontext):
    """The mean sequence reward reward(h(x, y)) of the demonstrations (x, y), to be subtracted from
    every sequence reward (see the module docstring); 0.0 at the token level."""
    if level != "sequence":
        return 0.0
    total = 0.0
    for i in range(0, len(demos), batch_size):
        with autocast():
            h, _ = scores(scorer, prompts[i:i + batch_size], prompt_mask[i:i + batch_size],
                          demos[i:i + batch_size], eos_id, level)
        total += reward(upcast(h)).sum().item()
    return total / len(demos)


@torch.no_grad()
def shift_scores(scalar, c):
    """Subtract c from every score of a scalar model, through its head's bias (ScalarGPT) or its
    table (toy.tabular.TabularScalar): state_scores then reads h - c."""
    (scalar.score.bias if hasattr(scalar, "score") else scalar.table).sub_(c)


def bradley_terry_loss(r_chosen, r_rejected):
    """MLIRL Eq. (11): -log sigmoid(r(x, y_demo) - r(x, y_policy)), averaged over pairs."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def accuracy(r_chosen, r_rejected):
    """Fraction of pairs the reward model orders correctly (ties count half)."""
    d = r_chosen - r_rejected
    return ((d > 0).float() + 0.5 * (d == 0).float()).mean().item()
