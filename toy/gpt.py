"""
The tiny GPT on the toy MDP: the same nanoirl/model.py network that runs Pythia, small enough
that every response can still be enumerated (toy.mdp.ToyMDP.trajectory_logprobs), so the
objectives are checked with exact numbers on a neural policy as well as on tables.

    policy = tiny_gpt(mdp)            # a policy (nanoirl/policy.py interface)
    disc   = tiny_scalar_gpt(mdp)     # a reward / discriminator model (state_scores)
"""
import torch

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
