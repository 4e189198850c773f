"""
Training loops on the toy MDP, where every expectation can be computed exactly by enumeration.
They are small on purpose: the PPO versions and the train scripts build on them.

  minimise(policy, loss_fn)               exact gradient descent (L-BFGS or Adam) on any loss,
                                          e.g. an enumerated divergence within a policy class
  train_sft_exact(mdp, policy, target)    SFT on the exact expectation over the expert or over
                                          the empirical distribution of N demonstrations
  train_adversarial_exact(mdp, policy, reward_fn)
                                          policy steps with the exact optimal discriminator D*
                                          (Sun24 Eq. 16) and the exact policy gradient
  train_adversarial_sampled(mdp, policy, disc, reward_fn)
                                          a discriminator learned from samples (logistic loss of
                                          nanoirl/reward.py), exact policy gradient of its reward

The policy gradient with a reward r held fixed is that of E_pi[r] = sum_y d_pi(y|x) r(x, y)
(sequence level) or sum_(s,a) rho_pi(s, a) r(s, a) (token level): we differentiate that sum
exactly, which is what PPO estimates from samples (d_pi and rho_pi come from ToyMDP's
trajectory_logprobs and occupancy). Helpers: expected_reward, optimal_discriminator_logit,
full_table_policy (closed-form weighted-NLL minimiser in the fully expressive class), and
policy_loop (the Adam loop the three trainers share).
"""
import torch

from nanoirl.fdiv import optimal_logit
from nanoirl.reward import discriminator_loss, scores
from toy import metrics
from toy.mdp import EOS, PAD
from toy.tabular import TabularPolicy


def expected_reward(mdp, logd, r, level):
    """E_pi[r] per prompt, exactly: sum_y d r(y) (sequence, r (n_prompts, N)) or
    sum_(s,a) rho r(s, a) (token, r (n_prompts, S*V)). Its gradient (r fixed) is the exact
    policy gradient."""
    if level == "sequence":
        return (logd.exp() * r).sum(-1)
    return (mdp.occupancy(logd) * r).sum(-1)


def optimal_discriminator_logit(mdp, logd, target_logprob, level):
    """h* = log D* - log(1 - D*) = log p_target - log p_pi (Sun24 Eq. 16), on every response
    (sequence) or every state-action pair (token: log-occupancies; unreached pairs get 0)."""
    if level == "sequence":
        return optimal_logit(target_logprob, logd)
    return optimal_logit(mdp.occupancy(target_logprob).log(), mdp.occupancy(logd).log())


def full_table_policy(mdp, token_weights):
    """The full-prefix TabularPolicy with pi(a | s) proportional to the sum of token_weights over
    the enumerated responses whose token at s is a: token_weights (n_prompts * N, T), row-aligned
    with mdp.all_pairs(). Weights d(y|x) on every token give back d exactly; this is also the
    closed-form minimiser of any weighted NLL sum_y sum_t w_yt (-log pi(y_t|s_t)) in that class."""
    responses = mdp.all_pairs()[2]
    rows = mdp.pair_states[:, :-1]
    keep = (token_weights > 0) & (responses != PAD)
    c = torch.zeros(mdp.n_rows("full"), mdp.vocab_size, dtype=torch.float64)
    c.index_put_((rows[keep], responses[keep]), token_weights[keep].double(), accumulate=True)
    policy = TabularPolicy(mdp, "full")
    with torch.no_grad():
        policy.logits.copy_(torch.where(c > 0, c.log(), -50.0))
    return policy


# ---- loops ---------------------------------------------------------------------------------------
def minimise(policy, loss_fn, steps=100, lr=1.0, method="lbfgs"):
    """Minimise loss_fn() over the policy's parameters with exact gradients. L-BFGS (strong-Wolfe
    line search) reaches a stationary point to high precision; Adam for long or noisy runs.
    Returns the final loss. Restricted classes are not convex: the result depends on the init."""
    params = [p for p in policy.parameters() if p.requires_grad]
    if method == "lbfgs":
        opt = torch.optim.LBFGS(params, lr=lr, max_iter=steps, tolerance_grad=1e-12,
                                tolerance_change=1e-15, history_size=50, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss
        opt.step(closure)
    else:
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            loss_fn().backward()
            opt.step()
    with torch.no_grad():
        return loss_fn().item()


def policy_loop(mdp, policy, step_loss, steps, lr, log_every=0):
    """The loop the trainers below share: `steps` Adam steps, each on the loss
    step_loss(log d_pi) with d_pi (n_prompts, N) enumerated exactly from the current policy.
    Returns [(step, metrics.summary(mdp, log d_pi)), ...] every log_every steps and at the end
    (empty when log_every = 0)."""
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    history = []
    for step in range(steps + 1):
        logd = mdp.trajectory_logprobs(policy)
        if log_every and (step % log_every == 0 or step == steps):
            history.append((step, metrics.summary(mdp, logd.detach())))
        if step == steps:
            break
        loss = step_loss(logd)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return history


def train_sft_exact(mdp, policy, target_logprob=None, steps=300, lr=0.05, log_every=0):
    """SFT with exact expectations: Adam on E_{y~target}[-log d_pi(y|x)] = KL(target || d_pi) +
    const (Sun24 Eq. 13-14), target = the expert (infinitely many demonstrations) or the empirical
    distribution of a demonstration set (then the gradient is exactly sft.sft_loss's on that set).
    Returns the history of policy_loop."""
    target = mdp.expert_logprob if target_logprob is None else target_logprob
    nll = lambda logd: -torch.where(target > -float("inf"), target.exp() * logd, 0.0).sum(-1).mean()
    return policy_loop(mdp, policy, nll, steps, lr, log_every)


def train_adversarial_exact(mdp, policy, reward_fn, level="sequence", steps=300, lr=0.05,
                            target_logprob=None, log_every=0):
    """Adversarial imitation with the exact optimal discriminator: each step sets h = h*(pi)
    (Sun24 Eq. 16, against the expert or any target distribution, e.g. an empirical one),
    gives the policy r = reward_fn(h) held fixed, and takes one Adam step on -E_pi[r].
    Returns the history of policy_loop."""
    target = mdp.expert_logprob if target_logprob is None else target_logprob

    def step_loss(logd):
        with torch.no_grad():
            r = reward_fn(optimal_discriminator_logit(mdp, logd, target, level))
        return -expected_reward(mdp, logd, r, level).mean()
    return policy_loop(mdp, policy, step_loss, steps, lr, log_every)


def train_adversarial_sampled(mdp, policy, disc, reward_fn, level="sequence", steps=300, lr=0.05,
                              demos=None, batch=512, disc_steps=5, disc_lr=0.1, weight_decay=0.0,
                              generator=None, log_every=0):
    """Adversarial imitation with a discriminator learned from samples. Each step: disc_steps
    Adam steps of the logistic loss (expert label 1; reward.discriminator_loss) on `batch`
    demonstrations (drawn from the fixed set `demos`, or fresh from the expert when None) against
    `batch` fresh samples of pi; then one policy step on the exact E_pi[reward_fn(h)], h read
    from disc (reward.scores) on every enumerated response. Returns the history of policy_loop."""
    prompts_x, mask_x = mdp.prompt_tokens(torch.arange(mdp.n_prompts))
    opt_d = torch.optim.Adam(disc.parameters(), lr=disc_lr, weight_decay=weight_decay)

    def step_loss(logd):
        for _ in range(disc_steps):
            x = torch.randint(mdp.n_prompts, (batch,), generator=generator)
            if demos is None:
                expert = prompts_x[x], mask_x[x], mdp.sample(mdp.expert_logprob, x, generator)
            else:
                i = torch.randint(len(demos[2]), (batch,), generator=generator)
                expert = demos[0][i], demos[1][i], demos[2][i]
            own = prompts_x[x], mask_x[x], mdp.sample(logd.detach(), x, generator)
            loss = discriminator_loss(*scores(disc, *expert, EOS, level), *scores(disc, *own, EOS, level))
            opt_d.zero_grad()
            loss.backward()
            opt_d.step()
        with torch.no_grad():
            h, valid = scores(disc, *mdp.all_pairs(), EOS, level)
            r = reward_fn(h)
        if level == "sequence":
            return -expected_reward(mdp, logd, r.view(mdp.n_prompts, -1), level).mean()
        # token level: per-token rewards summed along each enumerated response, weighted by d_pi(y|x)
        r = torch.where(valid, r, 0.0).sum(-1).view(mdp.n_prompts, -1)
        return -expected_reward(mdp, logd, r, "sequence").mean()
    return policy_loop(mdp, policy, step_loss, steps, lr, log_every)
