"""
Reverse-KL imitation by adversarial training (AIRL-style), Sun24 Sec. 3.4.3:

  min_pi KL(rho_pi || rho_exp) = max_pi E_{rho_pi}[log rho_exp(s,a) - log rho_pi(s,a)]      Eq. (15)
  D*(s,a) = rho_exp / (rho_exp + rho_pi)                                                   Eq. (16)
  policy:        max_pi E_{rho_pi}[log D(s,a) - log(1 - D(s,a))]   (Sun24 writes min: see below) Eq. (17)
  discriminator: max_D  E_{rho_exp}[log D] + E_{rho_pi}[log(1 - D)]                         Eq. (18)
  Eq. (19)-(20): the same with d_pi(y|x), d_exp(y|x) in place of rho (trajectory level).

Sign of Eq. (17)/(19). With D = D*, log D* - log(1 - D*) = log rho_exp - log rho_pi, so
E_pi[log D - log(1 - D)] = -KL(rho_pi || rho_exp): the policy must MAXIMISE it. Sun24 writes
min_pi, which would maximise the reverse KL; RLignment's version of the same equation has max_pi.

The reward the policy receives: r = log D - log(1 - D) = h, the discriminator's logit
(RLignment: "the reward is the logit"), expert label 1, D = sigmoid(h). Holding r fixed during
the policy step is exact, not an approximation: grad_pi E_pi[h*] = -grad KL, because the part
of the gradient through h* = log p - log pi is -E_pi[grad log pi] = 0 (nanoirl/fdiv.py derives
it for every f; here f(u) = -log u and the reward h is f*(f'(e^h)) - f'(1)).
  level "sequence": one reward h(x, y) per response, read at its last token (Eq. 19-20);
  level "token":    h(s_t, a_t) on every token (Eq. 17-18). sum_t h(s_t, a_t) then gives the
                    gradient of the reverse KL between the *unnormalised* occupancy measures,
                    sum rho_pi log(rho_pi / rho_exp) - sum rho_pi + sum rho_exp.
One caveat at token level: reward.discriminator_loss averages over tokens, so its optimum is
the ratio of *normalised* occupancies, h = log(rho_exp / rho_pi) - log(E_exp|y| / E_pi|y|): every
token carries the offset log(E_pi|y| / E_exp|y|), a penalty while the policy's responses are
shorter than the expert's and a bonus while longer (it widens a length gap) that vanishes only
when the mean lengths agree. toy/train.py uses the exact unnormalised h* instead.
We use an unstructured discriminator as Sun24 and RLignment do, not Fu et al.'s
D = exp(f) / (exp(f) + pi), whose f would be a transferable reward.
"""
import torch


def airl_reward(h):
    """r = log D - log(1 - D) = h, the discriminator logit (Sun24 Eq. 17 / 19 with the policy
    maximising). At D*, h = log(p_exp / p_pi) and E_pi[r] = -KL(p_pi || p_exp)."""
    return h


def reverse_kl_estimate(h_policy, mask_policy):
    """KL(pi || exp) estimated from policy samples through the discriminator (Eq. 15 with Eq. 16):
    -(1/B) sum_i sum_t h_it over valid entries. Exact in expectation when h = h*; with a learned
    discriminator it is only as good as the discriminator."""
    h = torch.where(mask_policy, h_policy, 0.0)
    return -(h.sum(-1) if h.dim() > 1 else h).mean()
