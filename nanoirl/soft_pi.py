"""
Soft policy iteration: the policy step of max-likelihood IRL (MLIRL Eq. 9) and of every
KL-regularised RL problem (MLIRL Eq. 3, Eq. 5b). For a reward r and a reference pi_ref,

    max_pi E_pi[r] - beta KL(pi || pi_ref)   is solved by   pi*(y|x) = pi_ref(y|x) exp(r(x,y)/beta) / Z(x)
                                                                          (MLIRL Eq. 12, Appendix B)
Exact (tensors in, tensors out; the toy enumerates every response, toy/exact.py builds the inputs,
and fits restricted policy classes to these targets):
  trajectory_optimum   Eq. 12 on enumerated responses, in log space, per prompt
  soft_bellman         the same optimum built token by token for state-action rewards:
                         Q(s,a) = r(s,a) + V(s'),  V(s) = beta log sum_a pi_ref(a|s) exp(Q(s,a)/beta),
                         pi*(a|s) = pi_ref(a|s) exp((Q(s,a) - V(s))/beta),  V = 0 after EOS / at the horizon
  best_of_n_logprobs   the exact law of the Best-of-N pick, ties included
Sampled (usable by a GPT):
  best_of_n            sample N responses per prompt, keep the highest-reward one
  soft_weights         self-normalised weights exp(r/beta) per prompt (reward-weighted regression)
  weighted_sft_loss    -sum_i w_i log pi(y_i|x_i): with w = soft_weights on samples of pi_ref it
                       fits pi_ref exp(r/beta) / Z (sampled soft PI); with w = 1 on Best-of-N picks
                       it is the Best-of-N policy step (RAFT, MLIRL Sec. 6.2)
"""
import torch
import torch.nn.functional as F

from nanoirl.policy import sequence_logprob


def trajectory_optimum(ref_logd, reward, beta):
    """log pi*(y|x) = log pi_ref(y|x) + r(x,y)/beta - log Z(x).  (n_prompts, N) in and out."""
    z = ref_logd + reward / beta
    return z - z.logsumexp(-1, keepdim=True)


def soft_value(ref_logd, reward, beta):
    """beta log Z(x) = max_pi E_pi[r] - beta KL(pi || pi_ref): the soft value of the prompt."""
    return beta * (ref_logd + reward / beta).logsumexp(-1)


def soft_bellman(ref_logp, reward, next_state, beta):
    """Token-level soft Bellman backup by backward induction over depth t = T-1 .. 0.
    ref_logp[t], reward[t]: (S_t, A) log pi_ref(a|s) and r(s, a) for the S_t states at depth t;
    next_state[t]: (S_t, A) long, index of s' = (s, a) among the states at depth t + 1, or -1 when
    a ends the response (EOS). States at depth T have V = 0 (truncation at the horizon).
    Returns (log_pi, V): lists over t of (S_t, A) log pi*(a|s) and (S_t,) V(s)."""
    T = len(ref_logp)
    log_pi, values, v_next = [None] * T, [None] * T, None
    for t in reversed(range(T)):
        nxt = next_state[t]
        cont = torch.zeros_like(reward[t]) if v_next is None else \
            torch.where(nxt >= 0, v_next[nxt.clamp_min(0)], 0.0)          # V(s'), 0 after EOS
        q = reward[t] + cont                                                # Q(s,a) = r + V(s')
        v = beta * (ref_logp[t] + q / beta).logsumexp(-1)                   # soft maximum
        log_pi[t] = ref_logp[t] + (q - v[:, None]) / beta
        values[t] = v_next = v
    return log_pi, values


def best_of_n_logprobs(logd, reward, n):
    """Exact log-law of Best-of-N: draw n responses from d (n_prompts, N), keep the highest reward
    (ties broken without looking at the response, e.g. the first drawn as argmax does). With
    F(y) = P(r <= r(y)), F(y-) = P(r < r(y)),
    the kept response lands in y's tie group G with probability F(y)^n - F(y-)^n, and inside G it
    is distributed as d restricted to G:  P(y) = (F(y)^n - F(y-)^n) d(y) / (F(y) - F(y-))."""
    p = logd.exp()
    le = reward[..., None, :] <= reward[..., :, None]                      # [.., y, y'] r(y') <= r(y)
    lt = reward[..., None, :] < reward[..., :, None]
    f_le, f_lt = (le * p[..., None, :]).sum(-1), (lt * p[..., None, :]).sum(-1)
    group = (f_le - f_lt).clamp_min(1e-300)                                 # d(G), G = ties of y
    return ((f_le ** n - f_lt ** n) * p / group).log()


@torch.no_grad()
def best_of_n(policy, prompts, prompt_mask, score_fn, n, max_new_tokens, eos_id, pad_id,
              temperature=1.0, generator=None, batch_size=None):
    """Sample n responses per prompt and keep the best under score_fn(prompts, mask, responses) ->
    (B,) sequence scores, sampling and scoring batch_size of the B * n rows at a time (None: all).
    Returns (responses (B, R), scores (B,) of the kept ones)."""
    B = len(prompts)
    p, m = prompts.repeat_interleave(n, 0), prompt_mask.repeat_interleave(n, 0)
    bs, ys, ss = batch_size or len(p), [], []
    for i in range(0, len(p), bs):
        y, _ = policy.sample(p[i:i + bs], m[i:i + bs], max_new_tokens, eos_id, pad_id, temperature, generator=generator)
        ys.append(y)
        ss.append(score_fn(p[i:i + bs], m[i:i + bs], y))
    y, s = torch.cat(ys), torch.cat(ss).view(B, n)
    best = s.argmax(1)                                                      # first among ties
    return y.view(B, n, -1)[torch.arange(B), best], s[torch.arange(B), best]


def soft_weights(rewards, beta):
    """(B, n) rewards of n samples per prompt -> weights exp(r/beta) normalised per prompt. On
    samples of pi_ref they are self-normalised importance weights towards pi_ref exp(r/beta)/Z."""
    return F.softmax(rewards / beta, dim=-1)


def weighted_sft_loss(policy, prompts, prompt_mask, responses, weights, eos_id):
    """-sum_i w_i log pi(y_i | x_i) / sum_i w_i over a batch of responses (w = 1: plain SFT)."""
    logd = sequence_logprob(policy.logprobs(prompts, prompt_mask, responses), responses, eos_id)
    weights = weights.reshape(-1).to(logd)
    return -(weights * logd).sum() / weights.sum()
