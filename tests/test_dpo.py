"""
nanoirl/dpo.py on the toy MDP, with exact numbers:
  - the DPO gradient (MLIRL Eq. 4) is its closed form -beta sigma(-m) (grad log pi(y_w) - grad log pi(y_l));
  - SPIN's exact rounds in the full class are ML-IRL's exact rounds with a moving reference,
    pi_{k+1} ∝ pi_k (p / pi_k)^(1/beta): at beta = 1 they land on the demonstrations' empirical law
    in one round, at beta = 2 they converge to it, at beta = 1/2 they alternate with period 2;
  - at pi = pi_ref the exact SPIN gradient is beta/2 times SFT's: SFT's stationary points are its
    fixed points in every class, and in the full class the empirical law is one;
  - one sampled SPIN iteration (spin_policy_step) raises the implicit reward's margin on its pairs.
"""
import pytest
import torch

from nanoirl import dpo, mlirl
from nanoirl.mlirl import MLIRLConfig
from nanoirl.policy import response_mask, sequence_logprob
from toy.exact import scheme_rounds, spin_exact
from toy.mdp import EOS, PAD
from toy.tabular import TabularPolicy
from toy.train import full_table_policy


def _random(mdp, kind, seed):
    policy = TabularPolicy(mdp, kind)
    with torch.no_grad():
        policy.logits.normal_(0, 1.0, generator=torch.Generator().manual_seed(seed))
    return policy


def test_dpo_gradient_is_its_closed_form(mdp):
    """Autograd through dpo_loss equals -beta/B sum_i sigma(-m_i) (grad log pi(y_w,i) - grad log pi(y_l,i)),
    the weights sigma(-m_i) held fixed, on 64 random pairs of a random position-only policy against a
    random bigram reference, beta = 0.3 (float64)."""
    g = torch.Generator().manual_seed(0)
    policy, ref, beta = _random(mdp, "position", 1), _random(mdp, "markov", 2), 0.3
    x = torch.randint(mdp.n_prompts, (64,), generator=g)
    p, m = mdp.prompt_tokens(x)
    uniform = torch.zeros(mdp.n_prompts, len(mdp.responses), dtype=torch.float64)
    yw, yl = mdp.sample(uniform, x, g), mdp.sample(uniform, x, g)
    seq = lambda model, y: sequence_logprob(model.logprobs(p, m, y), y, EOS)
    with torch.no_grad():
        rw, rl = seq(ref, yw), seq(ref, yl)
    lw, ll = seq(policy, yw), seq(policy, yl)
    auto = torch.autograd.grad(dpo.dpo_loss(lw, ll, rw, rl, beta), policy.logits, retain_graph=True)[0]
    weight = torch.sigmoid(-beta * ((lw - rw) - (ll - rl))).detach()
    closed = torch.autograd.grad(-(beta * weight * (lw - ll)).mean(), policy.logits)[0]
    assert auto.abs().max() > 1e-3 and (auto - closed).abs().max() < 1e-14


@pytest.mark.slow
def test_spin_full_class_is_the_exact_moving_reference_map(mdp):
    """spin_exact (L-BFGS on the exact expected DPO loss over every pair) against the closed-form map
    of toy.exact.scheme_rounds (Bradley-Terry optimum, moving reference), from the same start: KL(empirical
    || pi_k) agree to 2e-4 (the L-BFGS fit leaves < 3e-4 of mass on unseen responses, which the
    closed form puts at 0), 30 demonstrations."""
    demos = mdp.demonstrations(30, torch.Generator().manual_seed(1))
    d = mdp.empirical_logprob(demos[0], demos[2])
    with torch.no_grad():
        start = mdp.trajectory_logprobs(TabularPolicy(mdp, "full"))  # uniform per token
    for beta in (1.0, 2.0, 0.5):
        spin = [r["fkl_demos"] for r in spin_exact(mdp, TabularPolicy(mdp, "full"), d, 3, beta=beta)]
        exact = scheme_rounds(d, start, beta, 3)
        print(f"beta {beta}: SPIN {spin}, exact map {exact}")
        assert max(abs(a - b) for a, b in zip(spin, exact)) < 2e-4
    assert abs(spin[0] - spin[2]) < 1e-5 and abs(spin[0] - spin[1]) > 0.05  # beta 1/2: period 2


def test_spin_gradient_at_its_reference_is_sfts(mdp):
    """With pi = pi_ref, every margin of the exact expected DPO loss over all pairs (y ~ p) ≻
    (y' ~ pi) is 0 and its gradient is beta/2 (E_pi[grad log pi] - E_p[grad log pi]) = beta/2 grad
    E_p[-log pi]: SFT's gradient, here for a random position-only policy, beta = 0.7. So SFT's
    stationary points are SPIN's fixed points in every class; in the full class the empirical law p
    itself (a full table holding it) has gradient 0, the uniform policy does not."""
    demos = mdp.demonstrations(30, torch.Generator().manual_seed(1))
    d = mdp.empirical_logprob(demos[0], demos[2])
    weights = d.reshape(-1, 1).exp() * response_mask(mdp.all_pairs()[2], EOS)

    def spin_grad(policy, beta):
        with torch.no_grad():
            ref = mdp.trajectory_logprobs(policy)
        logd = mdp.trajectory_logprobs(policy)
        w = d.exp()[:, :, None] * ref.exp()[:, None, :]
        loss = dpo.dpo_loss(logd[:, :, None], logd[:, None, :], ref[:, :, None], ref[:, None, :], beta, w)
        return torch.autograd.grad(loss, policy.logits)[0]

    policy = _random(mdp, "position", 4)
    nll = -(d.exp() * mdp.trajectory_logprobs(policy)).sum(-1).mean()   # E_p[-log pi], mean over prompts
    sft_grad = torch.autograd.grad(nll, policy.logits)[0]
    spin = spin_grad(policy, 0.7)
    assert sft_grad.abs().max() > 1e-2 and (spin - 0.35 * sft_grad).abs().max() < 1e-14
    assert spin_grad(full_table_policy(mdp, weights), 1.0).abs().max() < 1e-12
    assert spin_grad(TabularPolicy(mdp, "full"), 1.0).abs().max() > 1e-3


def test_spin_policy_step_raises_the_margin(mdp):
    """One sampled SPIN iteration from a random bigram policy: its pairs (demonstration ≻ own sample)
    get a positive mean margin under the implicit reward beta log(pi / pi_k), which starts at 0."""
    g = torch.Generator().manual_seed(0)
    policy = _random(mdp, "markov", 3)
    ref = _random(mdp, "markov", 3)
    demos = mdp.demonstrations(120, g)
    cfg = MLIRLConfig(beta=1.0, sample_temperature=1.0, response_length=mdp.T, eos_id=EOS, pad_id=PAD)
    pairs = mlirl.sample_pairs(policy, demos, cfg, g)
    opt = torch.optim.AdamW(policy.parameters(), lr=0.05, weight_decay=0.0)
    stats = dpo.spin_policy_step(policy, ref, pairs, cfg, optimizer=opt, epochs=3, batch_size=32, generator=g)
    seq = lambda model, y: sequence_logprob(model.logprobs(pairs["prompts"], pairs["prompt_mask"], y), y, EOS)
    with torch.no_grad():
        margin = (seq(policy, pairs["chosen"]) - seq(ref, pairs["chosen"])) \
            - (seq(policy, pairs["rejected"]) - seq(ref, pairs["rejected"]))
    assert margin.mean() > 0.5 and stats["dpo_loss"] < torch.log(torch.tensor(2.0))
