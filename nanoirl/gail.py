"""
Jensen-Shannon imitation by adversarial training (GAIL), Sun24 Sec. 3.4.4:

  min_pi JS(rho_pi, rho_exp)
    = min_pi max_D E_{rho_exp}[log D] + E_{rho_pi}[log(1 - D)]  (+ log 4, / 2)           Eq. (21)-(22)
  Eq. (23): the same game on trajectories d_pi(y|x), d_exp(y|x).

At D* = p / (p + q) the game's value is 2 JS(p, q) - log 4, so the logistic discriminator loss
of nanoirl/reward.py gives a JS estimate: JS >= (log 4 - loss) / 2 (js_from_discriminator_loss).
Conventions: expert label 1, h = logit, D = sigmoid(h).

Two rewards are in use in public code, and they are not the same algorithm:
  "-log(1-D)"  r = -log(1 - D) = softplus(h). The policy's term of the game (22) is
               E_pi[log(1 - D)]; minimising it with D fixed is maximising this reward, and with
               D = D* its gradient is exactly -2 grad JS (envelope theorem: the part of the
               gradient through D* vanishes, nanoirl/fdiv.py). It is Ho & Ermon's GAIL, whose
               cost log D_GAIL labels the *policy* 1 (D_GAIL = 1 - D here).
  "log D"      r = log D = -softplus(-h): the "non-saturating" generator loss of Goodfellow et al.
               (2014), which gives larger gradients where D is near 0. It is not the JS gradient:
               with D = D* held fixed, sum_y grad q(y) log D*(y) = -2 grad KL(m || p), m = (p + q)/2
               (solve F - u F' = log(u / (1 + u)): F(u) = (1 + u) log(u / (1 + u)); Arjovsky &
               Bottou 2017 write it KL(q||p) - 2 JS). Its fixed point in a restricted policy class
               is the minimiser of KL((p + q)/2 || p), not of JS (toy numbers in the tests).
Level: one reward per response ("sequence", Eq. 23) or per token ("token", Eq. 21-22). At token
level the sign of the reward is a length incentive: -log(1-D) > 0 pays every extra token,
log D < 0 charges it (Kostrikov et al. 2019, "reward bias"). The centred
fdiv.f_reward(h, "js") = -log(1 - D) - log 2 is the one whose token-level gradient is exactly
that of the JS divergence between the unnormalised occupancy measures: train_airl.py's default
(at the sequence level it differs from -log(1 - D) by a constant, which changes nothing).
"""
import math

import torch.nn.functional as F


def gail_reward(h, convention="-log(1-D)"):
    """The GAIL policy reward from the discriminator logit h: -log(1 - D) = softplus(h) (default,
    the JS gradient at D*) or log D = -softplus(-h) (non-saturating; see the module docstring)."""
    if convention == "-log(1-D)":
        return F.softplus(h)
    if convention == "log D":
        return -F.softplus(-h)
    raise ValueError(f"unknown GAIL reward convention {convention!r}: use '-log(1-D)' or 'log D'")


def js_from_discriminator_loss(loss):
    """JS(p, q) from the logistic loss -E_exp[log D] - E_pi[log(1 - D)] (reward.discriminator_loss,
    trajectory level): (log 4 - loss) / 2, exact at D = D*, a lower bound for any other D."""
    return (math.log(4) - loss) / 2
