"""
Invariants of the toy token MDP (toy/mdp.py, toy/tabular.py, toy/gpt.py) and of the exact
divergences (toy/metrics.py, nanoirl/fdiv.py): every d_pi sums to 1, the occupancy measure sums
to the expected number of steps and equals a brute-force count, samplers draw from the enumerated
distribution, and every divergence is zero between identical distributions and equal to a
brute-force formula written with explicit Python loops. CPU, float64, a few seconds.
"""
import math

import pytest
import torch

from nanoirl.fdiv import f_divergence
from nanoirl.policy import left_pad, response_mask
from toy import metrics
from toy.gpt import tiny_gpt
from toy.mdp import EOS, PAD, ToyConfig, ToyMDP
from toy.tabular import TabularPolicy
from toy.train import full_table_policy

KINDS = ["full", "position", "markov"]


def random_policy(mdp, kind, seed=0):
    policy = TabularPolicy(mdp, kind)
    with torch.no_grad():
        policy.logits.normal_(0, 1.5, generator=torch.Generator().manual_seed(seed))
    return policy


# ---- the enumeration --------------------------------------------------------------------------------
def test_enumeration_is_every_response_once(mdp):
    texts = {mdp.decode(r) for r in mdp.responses}
    L, T = mdp.L, mdp.T
    assert len(texts) == len(mdp.responses) == sum(L ** k for k in range(T)) + L ** T
    for r in mdp.responses.tolist():  # k letters then EOS (k < T), or T letters (truncated)
        n = int(response_mask(torch.tensor([r]), EOS).sum())
        assert all(t >= 2 for t in r[:n - 1]) and all(t == PAD for t in r[n:])
        assert r[n - 1] == EOS or n == T


def test_all_pairs_are_built_once_prompt_major(mdp):
    """all_pairs() is enumerated once in ToyMDP.__init__ and shared: the same tensors on every
    call, row x * N + j = (prompt x, response j), and pair_states = state_ids("full") on them."""
    prompts, mask, responses = mdp.all_pairs()
    assert all(a is b for a, b in zip(mdp.all_pairs(), (prompts, mask, responses)))
    N = len(mdp.responses)
    x = torch.arange(mdp.n_prompts).repeat_interleave(N)
    ref_prompts, ref_mask = left_pad([[2 + mdp.L + i] for i in x.tolist()], PAD)  # one token per prompt
    assert torch.equal(prompts, ref_prompts) and torch.equal(mask, ref_mask)
    assert torch.equal(mdp.prompt_index(prompts), x) and torch.equal(responses, mdp.responses.repeat(mdp.n_prompts, 1))
    assert torch.equal(mdp.pair_states, mdp.state_ids("full", prompts, responses))


@pytest.mark.parametrize("kind", KINDS)
def test_tabular_trajectory_distribution_sums_to_one(mdp, kind):
    logd = mdp.trajectory_logprobs(random_policy(mdp, kind))
    assert torch.allclose(logd.exp().sum(-1), torch.ones(mdp.n_prompts, dtype=torch.float64), atol=1e-12)


def test_gpt_trajectory_distribution_sums_to_one(mdp):
    logd = mdp.trajectory_logprobs(tiny_gpt(mdp, seed=1))
    assert torch.allclose(logd.exp().sum(-1), torch.ones(mdp.n_prompts, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("letters, horizon, temperature", [(3, 5, 1.0), (4, 5, 0.7)])
def test_gpt_prefix_tree_equals_every_response_evaluated(letters, horizon, temperature):
    """mdp.trajectory_logprobs evaluates the tiny GPT once per prefix (toy.gpt.prefix_tree_logprobs,
    through the KV cache); evaluated on every response instead (GPT.logprobs), log d(y|x) and the
    gradient of a weighted sum of it agree to 1e-12 relative, in float64, with weights perturbed so
    that the logits are far from uniform."""
    mdp = ToyMDP(ToyConfig(n_letters=letters, horizon=horizon))
    policy = tiny_gpt(mdp, seed=1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    w = torch.randn(mdp.n_prompts, len(mdp.responses), generator=g, dtype=torch.float64)
    logd, grads = [], []
    for evaluate in (mdp.trajectory_logprobs, mdp.trajectory_logprobs_by_trajectory):
        policy.zero_grad()
        logd.append(evaluate(policy, temperature))
        (w * logd[-1]).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters()]))
    assert logd[1].min() < -10                                   # far from uniform (-log 1092 = -7)
    assert (logd[0] - logd[1]).abs().max() < 1e-12
    assert (grads[0] - grads[1]).abs().max() < 1e-12 * grads[1].abs().max()


def test_expert_and_empirical_are_distributions(mdp):
    assert torch.allclose(mdp.expert_logprob.exp().sum(-1), torch.ones(mdp.n_prompts, dtype=torch.float64))
    prompts, _, responses = mdp.demonstrations(30, torch.Generator().manual_seed(0))
    emp = mdp.empirical_logprob(prompts, responses).exp()
    assert torch.allclose(emp.sum(-1), torch.ones(mdp.n_prompts, dtype=torch.float64))
    assert torch.allclose(emp * 10, (emp * 10).round())  # 10 demonstrations per prompt


def test_best_of_n_means_count_the_picks_letters(mdp):
    """toy.irl.best_of_n_means with value = number of "a"s (the style rows of --table bon --style):
    N = 1 is the sampler's own mean; a reward that is the count itself buys more "a"s with N, its
    negative fewer, and at large N the pick goes to the count's extreme among the sampler's support."""
    from toy import irl
    logd = torch.log_softmax(torch.randn(mdp.n_prompts, len(mdp.responses), generator=torch.Generator().manual_seed(0),
                                         dtype=torch.float64), -1)
    n_a = (mdp.responses == 2).sum(-1).double()
    means = irl.best_of_n_means(logd, {"a": n_a.expand_as(logd), "-a": -n_a.expand_as(logd)}, n_a, ns=(1, 4, 16, 10**6))
    assert means["a"][0] == pytest.approx((logd.exp() * n_a).sum(-1).mean().item(), abs=1e-12) == means["-a"][0]
    assert means["a"] == sorted(means["a"]) and means["-a"] == sorted(means["-a"], reverse=True)
    assert means["a"][-1] == pytest.approx(n_a.max().item(), abs=1e-3) and means["-a"][-1] == pytest.approx(0, abs=1e-3)


def test_style_and_shared_expert(mdp):
    """ToyConfig.style: the demonstrator is exp(style * #a) times the expert, renormalised, a
    distribution with more "a"s on average; the gold reward stays the expert's log-likelihood.
    ToyConfig.shared_expert: every prompt has prompt 0's expert of the default MDP."""
    styled = ToyMDP(ToyConfig(style=1.0))
    n_a = (mdp.responses == 2).sum(-1).double()
    assert torch.equal(styled.gold_reward(), mdp.gold_reward())
    ratio = (styled.expert_logprob - mdp.expert_logprob - n_a).exp()   # the normaliser 1/Z, the same for every y
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-12)
    assert torch.allclose(styled.expert_logprob.exp().sum(-1), torch.ones(3, dtype=torch.float64))
    mean_a = lambda m: (m.expert_logprob.exp() * n_a).sum(-1)
    assert (mean_a(styled) > mean_a(mdp) + 0.1).all()
    shared = ToyMDP(ToyConfig(n_prompts=4, shared_expert=True))
    assert all(torch.equal(shared.expert_logprob[x], mdp.expert_logprob[0]) for x in range(4))


def test_full_table_represents_the_expert_exactly(mdp):
    """The full-prefix table is fully expressive: pi(a|s) = rho_exp(s, a) / rho_exp(s) gives back
    d_exp exactly (so the toy's state numbering and the enumeration agree)."""
    responses = mdp.all_pairs()[2]
    weights = mdp.expert_logprob.reshape(-1, 1).exp() * response_mask(responses, EOS)
    exact = full_table_policy(mdp, weights)
    assert torch.allclose(mdp.trajectory_logprobs(exact), mdp.expert_logprob, atol=1e-12)


# ---- occupancy measure ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_occupancy_sums_to_expected_length(mdp, kind):
    logd = mdp.trajectory_logprobs(random_policy(mdp, kind)).detach()
    rho = mdp.occupancy(logd)
    lengths = response_mask(mdp.responses, EOS).sum(-1).double()                 # (N,)
    expected = [sum(math.exp(logd[x, j]) * lengths[j].item() for j in range(len(lengths)))
                for x in range(mdp.n_prompts)]
    assert torch.allclose(rho.sum(-1), torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    # summary's eos_rate (the mass of responses holding EOS) is the occupancy of the EOS action
    eos_visits = rho.view(mdp.n_prompts, -1, mdp.vocab_size)[:, :, EOS].sum(-1)  # P(y ends with EOS | x)
    eos_rate = metrics.summary(mdp, logd)["eos_rate"]
    assert abs(eos_rate - eos_visits.mean().item()) < 1e-12 and 0 < eos_rate < 1


def test_occupancy_equals_brute_force_prefix_count(mdp):
    """rho(s_t, a_t | x) = P(the response starts with y_0..y_t), counted with a dict of prefixes."""
    logd = mdp.trajectory_logprobs(random_policy(mdp, "markov", seed=3)).detach()
    rho = mdp.occupancy(logd)
    prefix_mass = {}
    for x in range(mdp.n_prompts):
        for j, r in enumerate(mdp.responses.tolist()):
            n = int(response_mask(torch.tensor([r]), EOS).sum())
            for t in range(n):
                key = (x, tuple(r[:t + 1]))
                prefix_mass[key] = prefix_mass.get(key, 0.0) + math.exp(logd[x, j])
    prompts, mask, responses = mdp.all_pairs()
    sa = mdp.state_ids("full", prompts, responses)[:, :-1] * mdp.vocab_size + responses  # flat index
    for row, r in enumerate(responses.tolist()):
        x = row // len(mdp.responses)
        for t in range(int(response_mask(torch.tensor([r]), EOS).sum())):
            assert abs(rho.view(-1)[sa[row, t]].item() - prefix_mass[(x, tuple(r[:t + 1]))]) < 1e-12
            assert sa[row, t] // rho.shape[1] == x       # rho[x]: prompt x's state-action pairs only
    assert abs(rho.sum().item() - sum(prefix_mass.values())) < 1e-10


# ---- samplers draw from the enumerated distribution -------------------------------------------------
@pytest.mark.parametrize("which", ["tabular", "gpt", "enumerated"])
def test_samples_follow_the_enumerated_distribution(mdp, which):
    g = torch.Generator().manual_seed(0)
    policy = random_policy(mdp, "markov", seed=1) if which != "gpt" else tiny_gpt(mdp, seed=2)
    logd = mdp.trajectory_logprobs(policy).detach()
    x = torch.arange(6000) % mdp.n_prompts
    if which == "enumerated":
        responses = mdp.sample(logd, x, g)
    else:
        prompts, mask = mdp.prompt_tokens(x)
        responses, _ = policy.sample(prompts, mask, mdp.T, EOS, PAD, generator=g)
    freq = mdp.empirical_logprob(mdp.prompt_tokens(x)[0], responses).exp()
    p, n = logd.exp(), len(x) // mdp.n_prompts          # every response within 5 sigma (+ 2 counts)
    assert torch.all((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 2 / n)


def test_enumerated_sampler_is_seeded_and_skips_zero_mass(mdp):
    """mdp.sample: the same generator seed gives the same draws, and a response of probability 0
    (here: every response no demonstration holds) is never drawn."""
    prompts, _, demos = mdp.demonstrations(30, torch.Generator().manual_seed(0))
    emp = mdp.empirical_logprob(prompts, demos)
    x = torch.arange(3000) % mdp.n_prompts
    a, b = (mdp.sample(emp, x, torch.Generator().manual_seed(7)) for _ in range(2))
    assert torch.equal(a, b)
    assert torch.all(emp[x, mdp.response_ids(a)] > -float("inf"))


# ---- divergences ------------------------------------------------------------------------------------
def brute_force(p, q, name, alpha=0.5):
    """One divergence between two lists of probabilities, with an explicit loop."""
    total = 0.0
    for pi, qi in zip(p, q):
        m = (pi + qi) / 2
        if name == "fkl":
            total += pi * math.log(pi / qi) if pi > 0 else 0.0
        elif name == "rkl":
            total += qi * math.log(qi / pi) if qi > 0 else 0.0
        elif name == "js":
            total += 0.5 * ((pi * math.log(pi / m) if pi > 0 else 0.0) + (qi * math.log(qi / m) if qi > 0 else 0.0))
        elif name == "tv":
            total += 0.5 * abs(pi - qi)
        elif name == "alpha":
            total += (pi ** (1 - alpha) * qi ** alpha - (1 - alpha) * pi - alpha * qi) / (alpha * (alpha - 1))
    return total


def test_divergences_equal_brute_force_and_vanish_on_identical(mdp):
    e = mdp.expert_logprob
    q = mdp.trajectory_logprobs(random_policy(mdp, "position")).detach()
    exact = {"fkl": metrics.forward_kl(e, q), "rkl": metrics.reverse_kl(e, q), "js": metrics.js(e, q),
             "tv": metrics.tv(e, q), "alpha": metrics.alpha_div(e, q, 0.5)}
    for x in range(mdp.n_prompts):
        p_list, q_list = e[x].exp().tolist(), q[x].exp().tolist()
        for name, value in exact.items():
            assert abs(value[x].item() - brute_force(p_list, q_list, name)) < 1e-10, name
    # nanoirl/fdiv.py's D_f agrees (the GAIL f gives 2 JS: Sun24 App. B says JS)
    assert torch.allclose(f_divergence(e, q, "fkl"), exact["fkl"])
    assert torch.allclose(f_divergence(e, q, "rkl"), exact["rkl"])
    assert torch.allclose(f_divergence(e, q, "js"), 2 * exact["js"])
    assert torch.allclose(f_divergence(e, q, "alpha"), exact["alpha"])
    for fn in (metrics.forward_kl, metrics.reverse_kl, metrics.js, metrics.tv):
        assert fn(q, q).abs().max() < 1e-12
    for kind in ("fkl", "rkl", "js", "alpha"):
        assert f_divergence(q, q, kind).abs().max() < 1e-12
        rho = mdp.occupancy(q).log()                  # between measures: zero on identical too
        assert f_divergence(rho, rho, kind).abs().max() < 1e-12


def test_divergences_with_zeros():
    """Empirical distributions have zeros: 0 log 0 = 0, and mass where q = 0 is an infinite KL."""
    p = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64).log()
    q = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64).log()
    assert abs(metrics.forward_kl(p, q).item() - math.log(2)) < 1e-12
    assert abs(f_divergence(p, q, "fkl").item() - math.log(2)) < 1e-12
    assert metrics.reverse_kl(p, q).item() > 1e6 and f_divergence(p, q, "rkl").item() == math.inf
    assert abs(metrics.js(p, q).item() - brute_force(p.exp().tolist(), q.exp().tolist(), "js")) < 1e-12


@pytest.mark.parametrize("argv,error", [
    (["toy.plots", "--demos", "4"], "argument --demos: expected multiples of 3, got '4'"),
    (["toy.irl", "--demos", "0"], "argument --demos: expected a positive integer, got '0'"),
    (["toy.irl", "--rounds", "-1"], "argument --rounds: expected a positive integer, got '-1'"),
    (["toy.irl", "--seeds", "0"], "argument --seeds: expected a positive integer, got '0'"),
    (["toy.irl", "--style", "nan"], "argument --style: expected a finite number >= 0, got 'nan'"),
    (["toy.plots", "--figures", "mlirl"], "argument --figures: 'mlirl': use a comma-separated list of "
                                          "modes, training, low_demo, mlirl_fig2, mlirl_schemes"),
])
def test_toy_commands_check_their_flags(argv, error, tmp_path, monkeypatch, capsys):
    """python -m toy.plots / toy.irl: a bad count is argparse's one-line error (status 2) before
    any work or file (toy.plots --demos takes one demonstration set per prompt, so multiples of 3;
    toy.irl --demos 0 used to print rows of NaN and exit 0). Each main() runs in this process on
    its sys.argv."""
    import importlib
    module = importlib.import_module(argv[0])
    monkeypatch.setattr("sys.argv", [argv[0], *argv[1:], *(["--out", str(tmp_path)] if argv[0] == "toy.plots" else [])])
    with pytest.raises(SystemExit) as stop:
        module.main()
    stderr = capsys.readouterr().err
    assert stop.value.code == 2 and stderr.strip().splitlines()[-1].endswith("error: " + error), stderr
    assert not any(tmp_path.iterdir())
