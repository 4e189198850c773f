"""
Exact divergences and diagnostics between distributions given as log-probabilities over the
last dimension (responses, or state-action pairs). Zero-probability entries are log 0 = -inf or
nanoirl.policy.NEG_INF; both are handled: 0 * log 0 counts as 0, and mass where the other
distribution has none gives an infinite (or 1e9-sized) KL, as it should.

f-divergences follow Sun24 Appendix B: D_f(P || Q) = sum_x q(x) f(p(x) / q(x)).
"""
import math

import torch

from nanoirl.policy import NEG_INF


def _p(logp):
    return logp.exp()


def _safe(logp):
    return logp.clamp_min(NEG_INF)


def forward_kl(logp_exp, logq):
    """KL(p || q) = sum p (log p - log q): mass-covering when minimised over q."""
    p = _p(logp_exp)
    return torch.where(p > 0, p * (_safe(logp_exp) - _safe(logq)), 0.0).sum(-1)


def reverse_kl(logp_exp, logq):
    """KL(q || p): mode-seeking when minimised over q."""
    return forward_kl(logq, logp_exp)


def js(logp, logq):
    """Jensen-Shannon divergence: (KL(p||m) + KL(q||m)) / 2 with m = (p + q) / 2."""
    logm = torch.logaddexp(_safe(logp), _safe(logq)) - math.log(2.0)
    return 0.5 * (forward_kl(logp, logm) + forward_kl(logq, logm))


def tv(logp, logq):
    return 0.5 * (_p(logp) - _p(logq)).abs().sum(-1)


def alpha_div(logp_exp, logq, alpha):
    """Sun24 App. B alpha-IRL: D_f(p || q) with f(u) = (u^(1-a) - (1-a) u - a) / (a (a - 1)),
    i.e. (1 - sum p^(1-a) q^a) / (a (1 - a)) for normalised p, q. a -> 0 gives KL(p||q),
    a -> 1 gives KL(q||p)."""
    if alpha in (0, 1):
        return forward_kl(logp_exp, logq) if alpha == 0 else reverse_kl(logp_exp, logq)
    mixed = ((1 - alpha) * _safe(logp_exp) + alpha * _safe(logq)).exp().sum(-1)
    return (1 - mixed) / (alpha * (1 - alpha))


def entropy(logp):
    p = _p(logp)
    return -torch.where(p > 0, p * _safe(logp), 0.0).sum(-1)


def normalise(rho):
    """An occupancy measure (sums to E[|y|]) -> log of the distribution rho / sum(rho)."""
    return (rho / rho.sum(-1, keepdim=True)).log()


def mode_mass(mdp, logd):
    """(n_prompts, n_modes): mass the policy puts on each expert mode."""
    return torch.stack([logd[x, mdp.modes[x]].exp() for x in range(mdp.n_prompts)])


def outside_support(mdp, logd):
    """(n_prompts,): mass the policy puts outside the expert's support (modes + tail), where
    the expert has only its tiny uniform background."""
    return torch.where(mdp.support, 0.0, logd.exp()).sum(-1)


def summary(mdp, logd, demo_logd=None):
    """Every exact number the toy reports for a policy, averaged over prompts. traj_entropy is
    the exact entropy of d^pi(y|x), nats per response (not PPO's per-token "entropy"); length the
    expected number of response tokens, the EOS included (as on text); eos_rate the mass of the
    responses that end with EOS (the rest are cut at the horizon T). With the demonstrations'
    empirical law demo_logd, also fkl_demos = KL(demos || pi)."""
    e = mdp.expert_logprob
    ended = (mdp.responses == mdp.eos_id).any(-1)
    demos = {} if demo_logd is None else {"fkl_demos": forward_kl(demo_logd, logd).mean().item()}
    return {
        **demos,
        "fkl": forward_kl(e, logd).mean().item(),
        "rkl": reverse_kl(e, logd).mean().item(),
        "js": js(e, logd).mean().item(),
        "tv": tv(e, logd).mean().item(),
        "traj_entropy": entropy(logd).mean().item(),
        "length": mdp.occupancy(logd).sum(-1).mean().item(),  # E|y|, tokens with the EOS
        "eos_rate": logd[:, ended].exp().sum(-1).mean().item(),
        "gold_reward": (logd.exp() * mdp.gold_reward()).sum(-1).mean().item(),
        "modes_covered": (mode_mass(mdp, logd) > 0.05).float().sum(-1).mean().item(),
        "outside_support": outside_support(mdp, logd).mean().item(),
    }


def win_rate(mdp, logd, logd_other):
    """(n_prompts,) P(g(y) > g(y')) + P(g(y) = g(y')) / 2 with y ~ d, y' ~ d_other, judged by the
    gold reward g: exact. Against the demonstrations' empirical distribution this is MLIRL Fig. 2c."""
    g = mdp.gold_reward()
    wins = (g[:, :, None] > g[:, None, :]).double() + 0.5 * (g[:, :, None] == g[:, None, :]).double()
    return torch.einsum("xi,xij,xj->x", logd.exp(), wins, logd_other.exp())


def pair_accuracy(mdp, rewards):
    """(n_prompts,) how often a reward r (n_prompts, N) orders a pair as the gold reward does, over
    held-out pairs y, y' drawn independently from half expert, half uniform (ties in r count half,
    pairs the gold reward ties are left out). Exact. MLIRL Fig. 2a on the toy."""
    g = mdp.gold_reward()
    p = 0.5 * mdp.expert_logprob.exp() + 0.5 / g.shape[1]
    w = p[:, :, None] * p[:, None, :] * (g[:, :, None] > g[:, None, :])   # ordered pairs, y better
    right = (rewards[:, :, None] > rewards[:, None, :]).double() \
        + 0.5 * (rewards[:, :, None] == rewards[:, None, :]).double()
    return (w * right).sum((1, 2)) / w.sum((1, 2))


# ---- over seeds ----------------------------------------------------------------------------------
def mean_std(values):
    """(mean, sample standard deviation with ddof = 1) of per-seed numbers; the std of one seed is 0.
    Every "±" of the seed tables (python -m toy.plots / toy.irl --seeds N) is this std."""
    v = torch.tensor(values, dtype=torch.float64)
    return v.mean().item(), (v.std().item() if len(v) > 1 else 0.0)


def over_seeds(rows):
    """Per-seed lists of {key: number} dicts (same keys) -> {key: (mean, std)}."""
    return {k: mean_std([r[k] for r in rows]) for k in rows[0]}
