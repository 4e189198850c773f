"""
The f-divergence family of adversarial imitation, Sun24 Appendix B:

  D_f(P || Q) = sum_x q(x) f(p(x) / q(x)),   P = expert (rho_exp or d_exp), Q = policy      App. B
  min_pi max_T  E_exp[T] - E_pi[f*(T)]                                                 Eq. (28)
  discriminator:  max_T  E_exp[T] - E_pi[f*(T)]                                        Eq. (29)
  policy:         max_pi E_pi[sum_t f*(T(s_t, a_t))]                                   Eq. (30)

Conventions everywhere in nanoirl: expert label 1, h = discriminator logit, D = sigmoid(h). The
optimal discriminator D* = p / (p + q) (Sun24 Eq. 16) has logit h* = log p - log q, and the optimal
T is T* = f'(p/q) = f'(e^h*): we parameterise T by the logit, T(h) = f'(e^h), so one discriminator
(trained with the logistic loss of nanoirl/reward.py, or with Eq. 29) serves every f.

The policy reward (derived, Eq. 30's sign checked). With u = p/q and p fixed,
  d/dq [q f(p/q)] = f(u) - u f'(u) = -f*(f'(u))        (f*(f'(u)) = u f'(u) - f(u))
so grad_pi D_f = -sum_x grad q(x) f*(T*(x)) = -grad_pi E_pi[f*(T)] with T held fixed: the policy
MAXIMISES E_pi[f*(T)], as Eq. (30) says, and that is exact with D = D*, not an approximation.
We subtract the constant f'(1) so that r = 0 where D = 1/2. For a trajectory-level reward (one
score per response) constants never matter; for a state-action reward they do, because
sum rho_pi = E_pi[|y|] depends on pi: a constant per-token reward is a length bonus. With the
shift, the token-level reward gives exactly the gradient of D_f~ between the unnormalised
occupancy measures, f~(u) = f(u) - f'(1)(u - 1), which is >= 0 and zero only at rho_pi = rho_exp.

  kind    divergence D_f(P||Q)    f(u)                                 reward r(h) = f*(T(h)) - f'(1)
  "rkl"   KL(Q || P)   AIRL       -log u                               h
  "js"    2 JS(P, Q)   GAIL       u log u - (1 + u) log((1 + u) / 2)   -log(1 - D) - log 2
  "fkl"   KL(P || Q)   FAIRL      u log u                              e^h - 1
  "alpha" D_alpha      alpha-IRL  (u^(1-a) - (1-a) u - a) / (a(a-1))   (e^((1-a) h) - 1) / (1 - a)
(Sun24 App. B says the GAIL f gives JS; it gives 2 JS, same minimiser.) FAIRL as published
rewards -h e^h = -f(e^h) (fairl_reward below): the *value* of -D_f at D*, not its gradient.
"""
import math

import torch
import torch.nn.functional as F


def optimal_logit(logp_exp, logq):
    """h* = log p - log q, the logit of D* = p / (p + q) (Sun24 Eq. 16), on tables of log-probs
    (trajectories) or log-occupancies (state-action pairs). Entries where both are 0 get h = 0."""
    both_zero = torch.isinf(logp_exp) & torch.isinf(logq) & (logp_exp < 0) & (logq < 0)
    return torch.where(both_zero, 0.0, logp_exp - logq)


def f_generator(u, kind, alpha=0.5):
    """f(u) of the table above (u = p/q > 0)."""
    if kind == "rkl":
        return -torch.log(u)
    if kind == "js":
        return torch.xlogy(u, u) - torch.xlogy(1 + u, (1 + u) / 2)
    if kind == "fkl":
        return torch.xlogy(u, u)
    if kind == "alpha":
        return (u ** (1 - alpha) - (1 - alpha) * u - alpha) / (alpha * (alpha - 1))
    raise ValueError(f"unknown f-divergence {kind!r}: use rkl, js, fkl or alpha")


def f_conjugate(t, kind, alpha=0.5):
    """f*(t) = sup_u {u t - f(u)} (Legendre-Fenchel), on the domain where it is finite."""
    if kind == "rkl":      # t < 0
        return -1 - torch.log(-t)
    if kind == "js":       # t < log 2
        return -torch.log(2 - torch.exp(t))
    if kind == "fkl":
        return torch.exp(t - 1)
    if kind == "alpha":    # t < 1 / alpha
        return ((1 - alpha * t) ** ((alpha - 1) / alpha) - 1) / (1 - alpha)
    raise ValueError(f"unknown f-divergence {kind!r}: use rkl, js, fkl or alpha")


def variational_function(h, kind, alpha=0.5):
    """T(h) = f'(e^h): the variational function of Eq. (28)-(29) read from a logit h."""
    if kind == "rkl":
        return -torch.exp(-h)
    if kind == "js":
        return math.log(2) + F.logsigmoid(h)              # log 2D
    if kind == "fkl":
        return 1 + h
    if kind == "alpha":
        return (1 - torch.exp(-alpha * h)) / alpha
    raise ValueError(f"unknown f-divergence {kind!r}: use rkl, js, fkl or alpha")


def f_reward(h, kind, alpha=0.5):
    """The policy reward of Eq. (30), r(h) = f*(T(h)) - f'(1), in closed form (table above).
    Maximising E_pi[r] with h = h* held fixed follows exactly -grad D_f (see the module docstring).
    Trajectory level: one reward per response; token level: r(h(s_t, a_t)) on every token."""
    if kind == "rkl":
        return h
    if kind == "js":
        return F.softplus(h) - math.log(2)                # -log(1 - D) - log 2
    if kind == "fkl":
        return torch.expm1(h)
    if kind == "alpha":
        return torch.expm1((1 - alpha) * h) / (1 - alpha)
    raise ValueError(f"unknown f-divergence {kind!r}: use rkl, js, fkl or alpha")


def fairl_reward(h):
    """r = -h e^h, FAIRL's reward as published (f-MAX, Ghasemipour et al. 2019) and in public code.
    It is -f(e^h) for f(u) = u log u, so E_pi[r] at D* *equals* -KL(p || q), but held fixed during
    the policy step its gradient is not -grad KL: with u = p/q,
        sum_x grad q(x) (-u log u) = grad_pi  1/2 E_p[(log p/q)^2]    (solve F - u F' = -u log u),
    so a policy step ASCENDS 1/2 E_exp[h*^2]: the expert is a repelling fixed point (toy numbers in
    tests/test_objectives.py). The reward with the forward-KL gradient is f_reward(h, "fkl")."""
    return -h * torch.exp(h)


def f_divergence(logp_exp, logq, kind, alpha=0.5):
    """Exact sum_x q f~(p/q) over the last dim, f~(u) = f(u) - f'(1)(u - 1), from log-probs
    (equal to D_f for distributions) or log-occupancies (then a divergence between measures).
    Zero entries are handled: 0 log 0 = 0; expert mass where q = 0 makes fkl infinite, etc."""
    p, q = logp_exp.exp(), logq.exp()
    if kind == "fkl":
        out = torch.xlogy(p, p) - torch.xlogy(p, q) - p + q
    elif kind == "rkl":
        out = torch.xlogy(q, q) - torch.xlogy(q, p) + p - q
    elif kind == "js":
        out = torch.xlogy(p, p) + torch.xlogy(q, q) - torch.xlogy(p + q, (p + q) / 2)
    elif kind == "alpha":
        mixed = ((1 - alpha) * logp_exp + alpha * logq).exp()
        out = (mixed - (1 - alpha) * p - alpha * q) / (alpha * (alpha - 1))
    else:
        raise ValueError(f"unknown f-divergence {kind!r}: use rkl, js, fkl or alpha")
    return out.sum(-1)


def variational_loss(h_expert, mask_expert, h_policy, mask_policy, kind, alpha=0.5):
    """Eq. (29) negated, to minimise: -(E_exp[T(h)] - E_pi[f*(T(h))]), each a mean over valid
    entries. Its minimiser over h is h* = log p/q, the same as discriminator_loss's (reward.py)."""
    T_e = variational_function(h_expert, kind, alpha)[mask_expert]
    T_p = variational_function(h_policy, kind, alpha)[mask_policy]
    return -(T_e.mean() - f_conjugate(T_p, kind, alpha).mean())
