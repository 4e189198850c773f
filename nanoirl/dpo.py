"""
DPO (MLIRL Eq. 4) and SPIN, the baseline MLIRL compares with (Sec. 2, Chen et al. 2024).

  Eq. 4   max_pi E_{(x, y_w, y_l)}[log sigma(beta log pi(y_w|x)/pi_ref(y_w|x) - beta log pi(y_l|x)/pi_ref(y_l|x))]

DPO reads the reward as r = beta log(pi / pi_ref) (the optimum of MLIRL Eq. 3 solved for r) and puts
it into the Bradley-Terry loss (Eq. 2 / 11): the reward step and the policy step in one loss, with no
reward model. Its gradient, with margin m = beta (log pi/pi_ref (y_w) - log pi/pi_ref (y_l)):
    grad loss = -beta sigma(-m) (grad log pi(y_w|x) - grad log pi(y_l|x))
SPIN iterates DPO on the pairs (demonstration ≻ a sample of the current policy pi_k), with pi_k
itself as the reference: ML-IRL's round (mlirl.mlirl_round) with the reward model replaced by
beta log(pi / pi_k). In the full class its exact round is ML-IRL's exact round with a moving
reference, pi_{k+1} ∝ pi_k (p_demo / pi_k)^(1/beta) (toy.exact.bt_optimum), whose fixed point is the
demonstrations' empirical law p_demo; beta = 1 lands there in one round (tests/test_mlirl.py).
pi is the policy at the temperature its negatives are drawn at (cfg.sample_temperature; 0.7 on
text): the log-ratios read logits / T, as PPO's log-probs do (ppo.py, detail 2). At T = 1 against
negatives drawn at 0.7 the exact round would be pi_k p / pi_k^(0.7), not p.

  dpo_loss         Eq. 4 on sequence log-probs (negated, to minimise), optionally weighted
  spin_policy_step one SPIN iteration on sampled pairs: epochs of DPO minibatches against ref = pi_k
"""

import torch
import torch.nn.functional as F

from nanoirl import ppo
from nanoirl.model import upcast
from nanoirl.policy import sequence_logprob


def dpo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta, weight=None):
    """-log sigma(beta (log pi/pi_ref (chosen) - log pi/pi_ref (rejected))), MLIRL Eq. 4 negated:
    the mean over pairs, or with a weight (any shape that broadcasts) the weighted mean (the exact
    expectation over every pair on the toy: toy.exact.spin_exact)."""
    margin = beta * ((logp_chosen - ref_chosen) - (logp_rejected - ref_rejected))
    per_pair = -F.logsigmoid(margin)
    return per_pair.mean() if weight is None else (weight * per_pair).sum() / weight.sum()


def spin_policy_step(policy, ref, pairs, cfg, *, optimizer, epochs, batch_size, generator=None):
    """One SPIN iteration: `epochs` passes of DPO minibatches over the pairs (demonstration ≻ sample
    of pi_k), reference `ref` = pi_k (a frozen copy of the policy the pairs were sampled from), beta
    = cfg.beta, AdamW `optimizer` on the policy. cfg is an MLIRLConfig (eos_id, micro-batches,
    autocast, and sample_temperature: the negatives' temperature, at which every log-prob is read).
    Returns {"dpo_loss", "dpo_accuracy"}: means over the steps, accuracy = how often the implicit
    reward beta log(pi / ref) ranks the demonstration above the sample."""
    def seq_logprobs(model, p, m, y):
        lp = model.logprobs(p, m, y, cfg.sample_temperature or 1.0)  # logits / T; greedy (T = 0) reads at 1
        return upcast(sequence_logprob(lp, y, cfg.eos_id))    # bf16 -> fp32, fp64 stays

    p, m, yw, yl = pairs["prompts"], pairs["prompt_mask"], pairs["chosen"], pairs["rejected"]
    bs = cfg.sample_batch_size  # rows per no-grad pass (--forward-batch-size)
    with torch.no_grad(), ppo.autocast(p.device, cfg):  # the reference's log-probs, once
        ref_w = torch.cat([seq_logprobs(ref, p[i:i + bs], m[i:i + bs], yw[i:i + bs]) for i in range(0, len(p), bs)])
        ref_l = torch.cat([seq_logprobs(ref, p[i:i + bs], m[i:i + bs], yl[i:i + bs]) for i in range(0, len(p), bs)])
    stats = []
    for _ in range(epochs):
        perm = torch.randperm(len(p), generator=generator, device=ppo.draw_device(generator, p)).to(p.device)
        for start in range(0, len(p), batch_size):
            i = perm[start:start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            margins = []
            for j in i.split(cfg.micro_batch_size or batch_size):  # gradients of a mean accumulate exactly
                with ppo.autocast(p.device, cfg):
                    lw, ll = seq_logprobs(policy, p[j], m[j], yw[j]), seq_logprobs(policy, p[j], m[j], yl[j])
                (dpo_loss(lw, ll, ref_w[j], ref_l[j], cfg.beta) * len(j) / len(i)).backward()
                margins.append(cfg.beta * ((lw - ref_w[j]) - (ll - ref_l[j])).detach())
            optimizer.step()
            margins = torch.cat(margins)
            stats.append((-F.logsigmoid(margins).mean().item(), (margins > 0).float().mean().item()))
    return {"dpo_loss": sum(s[0] for s in stats) / len(stats), "dpo_accuracy": sum(s[1] for s in stats) / len(stats)}
