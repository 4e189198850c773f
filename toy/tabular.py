"""
Lookup-table policies and scalar models on the toy MDP, behind the interface of nanoirl/policy.py.

  TabularPolicy(mdp, "full")      pi(a | x, y_<t): one softmax per prefix, fully expressive
  TabularPolicy(mdp, "position")  pi(a | x, t): factorised by position, cannot correlate tokens
  TabularPolicy(mdp, "markov")    pi(a | x, y_{t-1}): a bigram model
  TabularScalar(mdp)              one number per full-prefix state (reward, value, discriminator)

In the two restricted classes the forward-KL and the reverse-KL projections of a multimodal
expert differ: that is where mass-covering and mode-seeking become visible.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoirl.policy import NEG_INF, pad_after_eos, sample_tokens


class TabularPolicy(nn.Module):
    def __init__(self, mdp, kind="full", dtype=torch.float64):
        super().__init__()
        self.mdp, self.kind = mdp, kind
        self.logits = nn.Parameter(torch.zeros(mdp.n_rows(kind), mdp.vocab_size, dtype=dtype))
        allowed = torch.zeros(mdp.vocab_size, dtype=torch.bool)
        allowed[mdp.action_ids] = True
        self.register_buffer("allowed", allowed)

    def _log_pi(self, rows, temperature):
        """(..., V) log pi(. | s) for table rows; tokens outside the action set get NEG_INF."""
        logits = self.logits[rows].masked_fill(~self.allowed, NEG_INF)
        return F.log_softmax(logits / max(temperature, 1e-8), dim=-1)

    def logprobs(self, prompts, prompt_mask, responses, temperature=1.0):
        rows = self.mdp.state_ids(self.kind, prompts, responses)[:, :-1]    # (B, R)
        logp = self._log_pi(rows, temperature)                               # (B, R, V)
        return logp.gather(-1, responses.unsqueeze(-1)).squeeze(-1)

    @torch.no_grad()
    def sample(self, prompts, prompt_mask, max_new_tokens, eos_id, pad_id, temperature=1.0,
               top_k=None, top_p=None, min_new_tokens=0, generator=None, rows=None, all_done=None):
        # top_k / top_p are accepted for the shared interface, the toy tables never need them; a
        # table samples all max_new_tokens steps (pad after EOS), so it never asks all_done
        B = prompts.shape[0]
        out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long)
        lps = torch.zeros(B, max_new_tokens, dtype=self.logits.dtype)
        for t in range(max_new_tokens):
            row = self.mdp.state_ids(self.kind, prompts, out[:, :t])[:, -1]   # table row of s_t
            logp = self._log_pi(row, temperature)                             # (B, V)
            masked = logp.clone()
            if t < min_new_tokens:
                masked[:, eos_id] = NEG_INF
            if temperature == 0:
                tok = masked.argmax(-1)
            else:
                tok = sample_tokens(masked.softmax(-1), generator, rows)  # = torch.multinomial(., 1)
            out[:, t] = tok
            lps[:, t] = logp.gather(1, tok[:, None]).squeeze(1)
        return pad_after_eos(out, eos_id, pad_id), lps


class TabularScalar(nn.Module):
    """r(s) for every full-prefix state: a fully expressive reward, value or discriminator."""

    def __init__(self, mdp, dtype=torch.float64):
        super().__init__()
        self.mdp = mdp
        self.table = nn.Parameter(torch.zeros(mdp.n_rows("full"), dtype=dtype))

    def state_scores(self, prompts, prompt_mask, responses):
        return self.table[self.mdp.state_ids("full", prompts, responses)]   # (B, R + 1)
