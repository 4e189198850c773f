"""
Supervised fine-tuning as forward-KL imitation, Sun24 Sec. 3.4.1-3.4.2.

  SFT / behaviour cloning   min_pi E_{(s,a)~rho_exp}[-log pi(a|s)]                       Eq. (7)
  trajectory forward KL     min_pi KL(d_exp || d_pi) = min_pi E_{y~D_exp}[-log d_pi(y|x)]
                                                     = min_pi E_{y~D_exp}[-sum_t log pi(y_t|s_t)]  Eq. (13)-(14)
  occupancy forward KL      min_pi KL(rho_exp || rho_pi) = min_pi E_{rho_exp}[-log rho_pi(s,a)]  Eq. (8)-(12)

Eq. (7) and Eq. (14) are the same loss when rho_exp is the *unnormalised* occupancy (it sums to
E[|y|]): a sum over a demonstration's tokens, averaged over demonstrations. So SFT on the data
set D_exp has exactly the gradient of KL(d_emp || d_pi), d_emp its empirical distribution
(tests/test_objectives.py: equal to 1e-15 on tables and on the tiny GPT, float64).

Eq. (12) corrected. rho_pi(s_k, a_k) = prod_{t<=k} pi(a_t|s_t) (Eq. 4 stops at k-1: that is the
state occupancy, without pi(a_k|s_k)). Then Eq. (9)-(10) give, for a response of K+1 tokens
y^(0..K), sum_{k=0..K} sum_{t=0..k} log pi(y_t|s_t) = sum_t (K + 1 - t) log pi(y_t|s_t): token t
lies in the K + 1 - t prefixes that contain it, so its weight is K + 1 - t, divided by the constant
E_exp[K + 1] if rho is normalised -- not (K - k)/K, which gives the EOS token weight 0.

What the reweighted loss is *not*. -E_exp[log rho_pi] (Eq. 8 right side) is a cross-entropy
between measures that do not sum to one, and sum rho_pi = E_pi[|y|] depends on pi: longer
responses visit more pairs. The divergences need a length term,
  KL(rho~_exp || rho~_pi) = occupancy_sft_loss / E_exp|y| + log E_pi|y| + const   (normalised rho)
  sum rho_exp log(rho_exp/rho_pi) - sum rho_exp + sum rho_pi = occupancy_sft_loss + E_pi|y| + const,
and without it even a fully expressive policy is pushed to longer responses than the expert's
(toy numbers in tests/test_objectives.py). The length term has no SFT-style estimator from
demonstrations alone: it needs samples of pi.
"""
import contextlib
import math

import torch

from nanoirl.policy import micro_batches, response_mask, sequence_lengths


def sft_loss(token_logprobs, responses, eos_id, per_token=False):
    """-(1/B) sum_i sum_t log pi(y_t | x_i, y_<t) over valid tokens: Sun24 Eq. (7) = Eq. (14).
    Its gradient equals grad KL(d_emp || d_pi) of the batch's empirical distribution. per_token=True
    averages over tokens instead (common practice): the same loss divided by the batch's mean
    length, which reweights sequences across batches of different mean length."""
    mask = response_mask(responses, eos_id)
    nll = -torch.where(mask, token_logprobs, 0.0).sum()
    return nll / (mask.sum() if per_token else responses.shape[0])


def occupancy_weights(responses, eos_id):
    """(B, R) weight of token t in the occupancy cross-entropy: n - t for a response of n valid
    tokens (n = K + 1, t = 0..K), 0 on padding. Sun24 Eq. (12) with the index fixed (see above)."""
    n = sequence_lengths(responses, eos_id)[:, None]
    t = torch.arange(responses.shape[1], device=responses.device)[None, :]
    return torch.where(response_mask(responses, eos_id), n - t, 0)


def occupancy_sft_loss(token_logprobs, responses, eos_id):
    """-E_{rho_exp}[log rho_pi(s, a)] = -(1/B) sum_i sum_t (n_i - t) log pi(y_t | s_t): the
    position-weighted NLL of Sun24 Eq. (8)-(12). Early tokens count more: they start more prefixes.
    Its gradient is that of sum rho_exp log(rho_exp / rho_pi); a divergence needs a length term
    (module docstring)."""
    w = occupancy_weights(responses, eos_id).to(token_logprobs.dtype)
    return -(w * torch.where(w > 0, token_logprobs, 0.0)).sum() / responses.shape[0]


def sft_step(policy, optimizer, prompts, prompt_mask, responses, eos_id, loss_fn=sft_loss,
             micro_batch_size=None, autocast=contextlib.nullcontext):
    """One optimiser step of loss_fn (sft_loss or occupancy_sft_loss) on a batch, in micro-batches
    whose gradients accumulate to those of the whole batch. Returns the loss (a float); a
    non-finite loss takes no step, and the caller stops the run."""
    B = len(responses)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for j in micro_batches(B, micro_batch_size, responses.device):
        p, m, y = prompts[j], prompt_mask[j], responses[j]
        with autocast():
            lp = policy.logprobs(p, m, y)
        lp = lp.float() if lp.dtype == torch.bfloat16 else lp
        loss = loss_fn(lp, y, eos_id) * len(y) / B  # this micro-batch's share of the batch's loss
        loss.backward()
        total += loss.item()
    if math.isfinite(total):
        optimizer.step()
    return total
