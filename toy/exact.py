"""
The toy's exact solvers: ML-IRL, SPIN and the KL-regularised policy step with every expectation
computed by enumerating all responses of the toy MDP. The tables and sweeps of toy/irl.py and the
tests are built on them; `train_mlirl.py --policy-step soft-pi` takes its policy step from here.

  sequence_reward_table(mdp, r)     a TabularScalar holding r(x, y) on each response's last state
  all_rewards(mdp, reward_model)    r(x, y) of every enumerated response (n_prompts, N)
  bellman_policy(mdp, ref, rm, b)   the token-level soft Bellman optimum as a full-prefix table
  table_of(mdp, logd)               a full table whose exact law is exp(logd)
  exact_policy_step(...)            MLIRL Eq. 9 exactly: the full table gets pi* itself, a restricted
                                    class (or the tiny GPT) its reverse-KL projection
  fit_sft(mdp, policy, demos)       SFT (nanoirl/sft.py) to convergence with exact gradients
  ppo_step(mdp, demos, seed)        a sampled policy step: nanoirl's PPO with train_mlirl.py's toy settings
  table_step(mdp, policy, step, cfg) any policy step on rounds held as log-probabilities
  mlirl_exact(...)                  ML-IRL rounds (MLIRL Algorithm 1) with exact expectations over pairs
                                    and policies: the reward step on Eq. 11 (or Eq. 10's gradient), and
                                    the exact policy step (or another, e.g. ppo_step)
  spin_exact(...)                   SPIN rounds (nanoirl/dpo.py, MLIRL Eq. 4) with the same exact expectations
  bt_optimum(demo_logd, neg_logd)   the exact minimiser of Eq. 11: r = log p_demo - log q
  scheme_rounds(...)                ML-IRL in the full class with both steps exact, as log-probabilities

They use only torch, nanoirl's algorithm files and the toy's MDP, tables and loops.
"""
import copy
import functools
import itertools
import math

import torch

from nanoirl import mlirl, ppo, soft_pi
from nanoirl.dpo import dpo_loss
from nanoirl.mlirl import MLIRLConfig
from nanoirl.policy import right_pad, sequence_lengths
from nanoirl.sft import sft_loss
from toy import metrics
from toy.mdp import EOS, PAD
from toy.tabular import TabularPolicy, TabularScalar
from toy.train import minimise


def sequence_reward_table(mdp, r):
    """TabularScalar whose state after a response's last valid token holds r(x, y) (n_prompts, N)
    and every other state 0: read at the sequence level it is r, at the token level it puts r on
    the last token."""
    responses = mdp.all_pairs()[2]
    rows = mdp.pair_states.gather(1, sequence_lengths(responses, EOS)[:, None])
    table = TabularScalar(mdp, dtype=r.dtype)
    with torch.no_grad():
        table.table[rows.squeeze(1)] = r.reshape(-1)
    return table


def all_rewards(mdp, reward_model, level="sequence"):
    """(n_prompts, N) r(x, y) of every response (token level: the sum of its token rewards)."""
    cfg = MLIRLConfig(level=level, eos_id=EOS, pad_id=PAD)
    return mlirl.sequence_rewards(reward_model, *mdp.all_pairs(), cfg).view(mdp.n_prompts, -1)


def _prefix_layers(mdp):
    """Per depth t: (prompts, mask, responses) of every (state, action) pair in state-major order,
    the states being the letter prefixes of length t of every prompt, and next_state (S_t, A)."""
    A, L = len(mdp.action_ids), mdp.L
    layers = []
    for t in range(mdp.T):
        prefixes = list(itertools.product(range(L), repeat=t))
        seqs, xs = [], []
        for x in range(mdp.n_prompts):
            for pre in prefixes:
                for a in mdp.action_ids:
                    seqs.append([2 + c for c in pre] + [a])
                    xs.append(x)
        prompts, mask = mdp.prompt_tokens(torch.tensor(xs))
        S = mdp.n_prompts * len(prefixes)
        child = torch.arange(S)[:, None] * L + torch.arange(L)[None, :]  # x*L^(t+1) + idx*L + c
        next_state = torch.cat([torch.full((S, 1), -1), child], dim=1)   # EOS ends the response
        layers.append((prompts, mask, right_pad(seqs, PAD, mdp.T), next_state, S, A))
    return layers


@torch.no_grad()
def bellman_policy(mdp, ref, reward_model, beta):
    """Full-prefix TabularPolicy pi*(a|s) from soft_pi.soft_bellman with the token rewards
    r(s_t, a_t) = reward_model.state_scores[:, t + 1] and pi_ref = ref (any policy):
    pi*(a|s) = pi_ref(a|s) exp((r(s, a) + V(s') - V(s)) / beta), V(s) = beta log sum_a
    pi_ref(a|s) exp((r(s, a) + V(s')) / beta), the token-level form of MLIRL Eq. 9 / 12."""
    ref_logp, reward, next_state, rows = [], [], [], []
    for t, (p, m, y, nxt, S, A) in enumerate(_prefix_layers(mdp)):
        ref_logp.append(ref.logprobs(p, m, y)[:, t].view(S, A).double())
        reward.append(reward_model.state_scores(p, m, y)[:, t + 1].view(S, A).double())
        next_state.append(nxt)
        rows.append(mdp.state_ids("full", p, y)[:, t].view(S, A)[:, 0])
    log_pi, _ = soft_pi.soft_bellman(ref_logp, reward, next_state, beta)
    policy = TabularPolicy(mdp, "full")
    for row, lp in zip(rows, log_pi):
        policy.logits[row[:, None], torch.tensor(mdp.action_ids)[None, :]] = lp
    return policy


def table_of(mdp, logd):
    """A full-prefix TabularPolicy whose exact trajectory law is exp(logd) (n_prompts, N), finite:
    the soft Bellman optimum of the zero table (token-uniform, not uniform over responses) under
    the sequence reward logd - log d_zero."""
    zero = TabularPolicy(mdp, "full")
    with torch.no_grad():
        return bellman_policy(mdp, zero, sequence_reward_table(mdp, logd - mdp.trajectory_logprobs(zero)), 1.0)


def exact_policy_step(policy, ref, reward_model, cfg, *, mdp, steps=200):
    """MLIRL Eq. 9 exactly (a policy_step for mlirl.mlirl_round): pi* = pi_ref exp(r/beta)/Z over
    every response. A full table is set to pi* (soft Bellman); any other class moves to its
    reverse-KL projection argmin KL(pi || pi*) (L-BFGS), i.e. max E_pi[r] - beta KL(pi || pi_ref)."""
    r = all_rewards(mdp, reward_model, cfg.level).detach()
    with torch.no_grad():
        target = soft_pi.trajectory_optimum(mdp.trajectory_logprobs(ref), r, cfg.beta)  # pi_ref e^(r/beta) / Z
    if getattr(policy, "kind", None) == "full":
        exact = bellman_policy(mdp, ref, sequence_reward_table(mdp, r), cfg.beta)
        with torch.no_grad():
            policy.logits.copy_(exact.logits)
    else:
        minimise(policy, lambda: metrics.forward_kl(mdp.trajectory_logprobs(policy), target).mean(), steps)
    with torch.no_grad():
        return {"kl_to_target": metrics.forward_kl(mdp.trajectory_logprobs(policy), target).mean().item()}


def fit_sft(mdp, policy, demos, steps=200):
    """SFT to convergence (L-BFGS, exact gradients): min E_D[-log pi(y|x)] (Sun24 Eq. 7), the
    forward-KL projection of the demonstrations' empirical distribution onto the policy class."""
    prompts, mask, responses = demos
    return minimise(policy, lambda: sft_loss(policy.logprobs(prompts, mask, responses), responses, EOS), steps)


def ppo_step(mdp, demos, seed, prompts=None, iterations=40, batch_size=256, lr=0.05, num_minibatches=4,
             temperature=1.0):
    """A sampled policy_step (policy, ref, reward_model, cfg) -> stats: the project's PPO
    (mlirl.ppo_policy_step) with train_mlirl.py's toy-table defaults, rollouts on prompts drawn
    from `prompts` = (prompts, prompt_mask) (default: the demonstrations'), the reward read minus
    the demonstrations' mean (demos). Each call starts a value model as a copy of the reward
    model (shifted by that mean: mlirl.ppo_policy_step) and a fresh AdamW, as train_mlirl.py does
    every round; one generator, seeded by `seed`, draws every prompt, response and minibatch of
    every call. It approximates MLIRL Eq. 9 by max E_pi[r] - beta KL(pi || ref) from samples."""
    ppo_cfg = ppo.PPOConfig(lr=lr, num_minibatches=num_minibatches, temperature=temperature,
                            response_length=mdp.T, eos_id=EOS, pad_id=PAD, missing_eos_penalty=None)
    g = torch.Generator().manual_seed(seed)

    def step(policy, ref, reward_model, cfg):
        value = copy.deepcopy(reward_model)
        return mlirl.ppo_policy_step(policy, ref, reward_model, cfg, value_model=value, demos=demos,
                                     optimizer=ppo.make_optimizer(policy, value, ppo_cfg), ppo_cfg=ppo_cfg,
                                     iterations=iterations, batch_size=batch_size, generator=g, prompts=prompts)
    return step


def table_step(mdp, policy, policy_step, cfg):
    """(log pi_k, r (n_prompts, N)) -> log pi_{k+1} for rounds held as log-probabilities
    (heldout_lines): policy_step on `policy`, whose law is pi_k, with a copy of it as the
    reference (moving) and r as a sequence reward; pi_{k+1} is the policy's exact law after it."""
    def step(logd, r):
        policy_step(policy, copy.deepcopy(policy), sequence_reward_table(mdp, r), cfg)
        with torch.no_grad():
            return mdp.trajectory_logprobs(policy)
    return step


def mlirl_exact(mdp, policy, demo_logd, rounds, beta=1.0, reward_grad="bt", accumulate=False,
                reinit=True, moving=True, rm_steps=20, rm_lr=0.1, policy_steps=200, policy_step=None):
    """ML-IRL (MLIRL Algorithm 1) with every expectation exact: a tabular reward r(x, y) (one number per response),
    the reward step = rm_steps Adam steps on the exact expected loss of Eq. 11 over all pairs
    (y ~ demo_logd) ≻ (y' ~ pi_k, or the mixture of pi_0..pi_k if accumulate),
    -sum_{y, y'} d_D(y) d_neg(y') log sigma(r(x, y) - r(x, y')), and the exact policy step of
    Eq. 9, pi_{k+1} ∝ ref exp(r / beta) (exact_policy_step), or policy_step(policy, ref, reward_model, cfg) in its place
    (e.g. ppo_step: then the pairs stay exact over the sampled policy's exact distribution).
    reward_grad "eq10" replaces Eq. 11 by the exact ML gradient of Eq. 6 (Lemma 5.1):
    grad = E_D[grad r] - E_{pi*_r}[grad r] with pi*_r from the current anchor.
    Returns a list of per-round metric dicts."""
    cfg = MLIRLConfig(beta=beta, eos_id=EOS, pad_id=PAD)
    if policy_step is None:
        policy_step = functools.partial(exact_policy_step, mdp=mdp, steps=policy_steps)
    ref = copy.deepcopy(policy)
    r = torch.zeros_like(demo_logd)
    negs, history = [], []
    for k in range(rounds):
        with torch.no_grad():
            logd = mdp.trajectory_logprobs(policy)
        negs.append(logd.exp())
        neg = torch.stack(negs).mean(0) if accumulate else negs[-1]
        r = torch.zeros_like(demo_logd) if reinit else r.detach()
        r.requires_grad_(True)
        opt = torch.optim.Adam([r], lr=rm_lr)
        ref_logd = mdp.trajectory_logprobs(policy if moving else ref).detach()
        for _ in range(rm_steps):
            if reward_grad == "eq10":   # -L^ of Eq. 6 up to constants: -(E_D[r] - beta log Z)
                loss = -((demo_logd.exp() * r).sum(-1) - soft_pi.soft_value(ref_logd, r, beta)).mean()
            else:                       # Eq. 11 over every pair, weighted d_D(y) * d_neg(y')
                w = demo_logd.exp()[:, :, None] * neg[:, None, :]
                loss = mlirl.pair_loss(r[:, :, None], r[:, None, :], w, "bt")
            opt.zero_grad()
            loss.backward()
            opt.step()
        if moving:
            ref.load_state_dict(policy.state_dict())
        policy_step(policy, ref, sequence_reward_table(mdp, r.detach()), cfg)  # Eq. 9
        with torch.no_grad():
            logd = mdp.trajectory_logprobs(policy)
        history.append({"round": k + 1, **metrics.summary(mdp, logd, demo_logd)})
    return history


def spin_exact(mdp, policy, demo_logd, rounds, beta=1.0, steps=200):
    """SPIN (nanoirl/dpo.py) with every expectation exact: each round the reference is pi_k and the
    policy minimises the exact expected DPO loss (MLIRL Eq. 4) over every pair (y ~ demonstrations)
    ≻ (y' ~ pi_k), -sum d_D(y) pi_k(y') log sigma(beta (log pi/pi_k (y) - log pi/pi_k (y'))),
    by L-BFGS from pi_k. At pi = pi_k every margin is 0 and the gradient of that loss is
    beta/2 grad E_demos[-log pi], SFT's: SFT's stationary points are SPIN's fixed points in every
    class, and SPIN from SFT does not move (tests/test_dpo.py). Returns per-round metric dicts."""
    history = []
    for k in range(rounds):
        with torch.no_grad():
            ref = mdp.trajectory_logprobs(policy)
        w = demo_logd.exp()[:, :, None] * ref.exp()[:, None, :]     # (n_prompts, y, y') pair weights

        def loss():
            logd = mdp.trajectory_logprobs(policy)
            return dpo_loss(logd[:, :, None], logd[:, None, :], ref[:, :, None], ref[:, None, :], beta, w)
        minimise(policy, loss, steps)
        with torch.no_grad():
            history.append({"round": k + 1, **metrics.summary(mdp, mdp.trajectory_logprobs(policy), demo_logd)})
    return history


def bt_optimum(demo_logd, neg_logd):
    """The exact minimiser of MLIRL Eq. 11's expected loss over every pair (y ~ demonstrations) ≻
    (y' ~ negatives), one free reward per response: r = log p_demo - log q + c (its gradient
    vanishes there, and the loss is convex), -inf where no demonstration has mass. It does not
    depend on where the fit starts, so a re-initialised and a persistent reward fitted to
    convergence are the same reward."""
    return torch.where(torch.isinf(demo_logd), -torch.inf, demo_logd - neg_logd)


def scheme_rounds(demo_logd, start_logd, beta, rounds, moving=True, accumulate=False):
    """ML-IRL in the full class with every step exact: the Bradley-Terry optimum on the round's
    negatives (pi_k, or the mixture of pi_0..pi_k with accumulate), r = log p_demo - log q
    (bt_optimum), then the policy step of MLIRL Eq. 9, pi_{k+1} ∝ anchor exp(r / beta), anchor pi_k (moving) or pi_0 (fixed). Log-probabilities
    (n_prompts, N) in; KL(empirical || pi_k) for k = 1..rounds out (mean over prompts)."""
    pi, negs, kls = start_logd, [], []
    for _ in range(rounds):
        negs.append(pi)
        neg = torch.stack(negs).logsumexp(0) - math.log(len(negs)) if accumulate else pi
        pi = soft_pi.trajectory_optimum(pi if moving else start_logd, bt_optimum(demo_logd, neg), beta)
        kls.append(metrics.forward_kl(demo_logd, pi).mean().item())
    return kls


