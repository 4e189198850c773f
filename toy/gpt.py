"""
The tiny GPT on the toy MDP: the same nanoirl/model.py network that runs Pythia, small enough
that every response can still be enumerated (toy.mdp.ToyMDP.trajectory_logprobs), so the
objectives are checked with exact numbers on a neural policy as well as on tables.

    policy = tiny_gpt(mdp)            # a policy (nanoirl/policy.py interface)
    disc   = tiny_scalar_gpt(mdp)     # a reward / discriminator model (state_scores)
    table  = prefix_tree_logprobs(policy, mdp)   # log pi(. | s) of every state, each prefix once
"""
import torch
import torch.nn.functional as F

from nanoirl.model import GPT, GPTConfig, ScalarGPT


def tiny_config(mdp, n_layer=2, n_head=2, n_embd=32):
    """Toy vocabulary, positions for the 1 prompt token and up to T response tokens."""
    return GPTConfig(vocab_size=mdp.vocab_size, block_size=1 + mdp.T, n_layer=n_layer,
                     n_head=n_head, n_embd=n_embd)


def tiny_gpt(mdp, seed=0, dtype=torch.float64, **dims):
    """A GPT policy whose actions are exactly the MDP's (EOS and the letters): every other token
    gets logit NEG_INF, so d_pi(y|x) sums to 1 over the enumerated responses."""
    with torch.random.fork_rng():  # seed the init without touching the caller's random state
        torch.manual_seed(seed)
        model = GPT(tiny_config(mdp, **dims)).to(dtype)
    model.set_allowed_tokens(mdp.action_ids)
    return model


def tiny_scalar_gpt(mdp, seed=0, dtype=torch.float64, **dims):
    """A ScalarGPT reward / discriminator model on the toy vocabulary."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return ScalarGPT(tiny_config(mdp, **dims)).to(dtype)


def prefix_tree_logprobs(model, mdp, temperature=1.0):
    """log pi(. | s) for every state s = (x, letter prefix) of the full table (mdp.state_ids):
    (mdp.n_rows("full"), vocab), rows of terminal states 0. Each prefix is evaluated once, depth by
    depth through model.py's KV cache: the L children of a depth-t prefix are its keys and values
    plus one new letter, so depth t costs n_prompts * L^t one-token steps. Enumerating the
    responses instead runs every shared prefix again for each response that extends it.
    Differentiable: each depth writes its keys and values into a fresh cache tensor, never into
    one that an earlier depth's attention saved for backward. The numbers equal model.logprobs
    on every response to rounding (tests/test_toy.py)."""
    cfg, w = model.config, model.embed_out.weight
    nh, hs, L = cfg.n_head, cfg.n_embd // cfg.n_head, mdp.L
    prompts, _ = mdp.prompt_tokens(torch.arange(mdp.n_prompts))          # (n_prompts, P), no padding
    letters = torch.tensor(mdp.action_ids[1:])                            # the L letter tokens, in order
    idx, pos, parents, depths = prompts, 0, None, []
    for t in range(mdp.T):               # states of depth t: every prompt x every prefix of t letters
        B, S = idx.shape[0], pos + idx.shape[1]
        cache = []                       # [layer][K, V]: (B, nh, S, hs), the parents' first
        for layer in range(cfg.n_layer):
            new = w.new_zeros(B, nh, S - pos, hs)
            kv = [new, new.clone()] if parents is None else \
                 [torch.cat([c.repeat_interleave(L, dim=0), new], dim=2) for c in parents[layer]]
            cache.append(kv)
        h = model.gpt_neox(idx, torch.ones(B, S, dtype=torch.bool), cache, pos)[:, -1]   # (B, C)
        depths.append(F.log_softmax(model.head(h) / (temperature or 1.0), dim=-1).view(mdp.n_prompts, L ** t, -1))
        # children: batch row b * L + c extends row b by letter c (prompt-major, lexicographic)
        idx, pos, parents = letters.repeat(B)[:, None], S, cache
    # the full table numbers prompt x's letter prefixes x * 2 n_tree + node, depth by depth in
    # lexicographic order; the prefixes of T letters and the terminal states never act: rows of 0
    acting = torch.cat(depths, dim=1)                                     # (n_prompts, sum_t L^t, V)
    rest = acting.new_zeros(mdp.n_prompts, 2 * mdp.n_tree - acting.shape[1], acting.shape[2])
    return torch.cat([acting, rest], dim=1).view(mdp.n_rows("full"), -1)
