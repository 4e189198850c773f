"""
The token MDP of Sun24 Sec. 3.1, small enough to enumerate every response.

  state  s_t = (x, y_<t)      action a_t = y_t in {EOS, a, b, c, ...}
  transition  s_{t+1} = concat(s_t, a_t)   (deterministic; a state holding EOS is absorbing)
  a response ends at EOS, or is truncated after `horizon` tokens

Everything a policy does on this MDP is computed exactly by enumeration:
  d^pi(y|x)  = prod_t pi(y_t | x, y_<t)                               Sun24 Eq. (5)
  rho^pi(s, a) = p(x) * P(s_t = s) * pi(a|s), summed over t          Sun24 Eq. (4)
The policy is only ever asked for `logprobs` (nanoirl/policy.py), so the same code enumerates a
lookup table and the tiny GPT of nanoirl/model.py.

Vocabulary: 0 = EOS ".", 1 = pad "_", then the letters "a", "b", ..., then one token per prompt.

The expert is multimodal: per prompt a few well-separated modes (different letters at every
position, different lengths), a low-mass tail on the responses one letter away from a mode, and
a tiny uniform background on every response. The background keeps every reverse KL finite; the
modes plus the tail are the expert's *support* (its typical set), so "mass outside the expert's
support" is a meaningful number. The gold reward used for evaluation is the expert's
log-likelihood r(x, y) = log d^exp(y|x): the expert is the soft-optimal policy of that reward
under a uniform reference. With ToyConfig.style the demonstrator has a habit the gold reward does
not value: its law is the expert's times exp(style * number of letters "a"), normalised.
"""
import itertools
from dataclasses import dataclass

import torch

from nanoirl.model import GPT
from nanoirl.policy import right_pad, sequence_logprob

EOS, PAD = 0, 1


@dataclass
class ToyConfig:
    n_prompts: int = 3
    n_letters: int = 3       # response symbols besides EOS
    horizon: int = 5         # max response tokens T
    n_modes: int = 3         # expert modes per prompt
    tail_mass: float = 0.05  # expert mass on the one-letter neighbours of the modes
    background: float = 0.01 # expert mass spread uniformly over every response
    seed: int = 0            # picks the modes and their weights
    shared_expert: bool = False  # every prompt gets the same expert (prompt 0's): prompts share their structure
    style: float = 0.0       # the demonstrator's habit: the expert tilted by exp(style * number of "a"s)


class ToyMDP:
    def __init__(self, cfg=ToyConfig()):
        self.cfg = cfg
        self.L, self.T, self.n_prompts = cfg.n_letters, cfg.horizon, cfg.n_prompts
        self.vocab_size = 2 + self.L + self.n_prompts
        self.eos_id, self.pad_id = EOS, PAD
        self.action_ids = [EOS] + [2 + i for i in range(self.L)]
        self.n_tree = sum(self.L ** t for t in range(self.T + 1))  # letter prefixes of length <= T
        self.responses = self._enumerate()                         # (N, T): every response
        self.index = {tuple(r): i for i, r in enumerate(self.responses.tolist())}
        self.modes, self.support, self.expert_logprob = self._make_expert()  # (n_prompts, N)
        self.gold_logprob = self.expert_logprob  # the gold reward: the expert's log-likelihood
        if cfg.style:  # demonstrations with a style the gold reward does not value: quality and style, two axes
            n_a = (self.responses == 2).sum(-1).double()
            self.expert_logprob = torch.log_softmax(self.gold_logprob + cfg.style * n_a, -1)
        # every (prompt, response) pair, enumerated once: all_pairs, trajectory_logprobs and
        # occupancy read these; pair_states[i, t] is the full-table row of state s_t of pair i
        x = torch.arange(self.n_prompts).repeat_interleave(len(self.responses))
        self._pairs = (*self.prompt_tokens(x), self.responses.repeat(self.n_prompts, 1))
        self.pair_states = self.state_ids("full", self._pairs[0], self._pairs[2])  # (n_prompts * N, T + 1)

    # ---- text <-> tokens ------------------------------------------------------------------------
    def letter(self, i):
        return "abcdefghijklmnopqrstuvwxyz"[i]

    def decode(self, tokens):
        out = []
        for t in tokens:
            t = int(t)
            if t == PAD:
                break
            out.append("." if t == EOS else self.letter(t - 2))
        return "".join(out)

    def encode(self, text):
        return [EOS if ch == "." else 2 + "abcdefghijklmnopqrstuvwxyz".index(ch) for ch in text]

    def prompt_tokens(self, x):
        """Prompt index tensor (B,) -> (prompts (B, 1), prompt_mask (B, 1)): one token per prompt."""
        prompts = (2 + self.L + torch.as_tensor(x, dtype=torch.long)).view(-1, 1)
        return prompts, torch.ones_like(prompts, dtype=torch.bool)

    def prompt_index(self, prompts):
        return prompts[:, -1] - (2 + self.L)

    # ---- enumeration ----------------------------------------------------------------------------
    def _enumerate(self):
        """Every response: k letters then EOS (k < T), or T letters with no EOS (truncated)."""
        seqs = []
        for k in range(self.T + 1):
            for letters in itertools.product(range(self.L), repeat=k):
                tail = [EOS] if k < self.T else []
                seqs.append([2 + c for c in letters] + tail)
        return right_pad(seqs, PAD, self.T)

    def all_pairs(self):
        """Every (prompt, response) pair, prompt-major: row x * N + j is (x, responses[j]).
        Returns (prompts, prompt_mask, responses), built once in __init__ and shared by every
        caller: read them, never modify them in place (clone first)."""
        return self._pairs

    def response_ids(self, responses):
        """(B, T) response tokens -> (B,) index into self.responses."""
        return torch.tensor([self.index[tuple(r)] for r in responses.tolist()], dtype=torch.long)

    def trajectory_logprobs(self, policy, temperature=1.0):
        """Exact log d^pi(y|x) for every prompt and response: (n_prompts, N). Differentiable.
        The tiny GPT is evaluated once per prefix (toy.gpt.prefix_tree_logprobs), then read like a
        full table; the tables, one lookup per token already, answer policy.logprobs."""
        if not isinstance(policy, GPT):
            return self.trajectory_logprobs_by_trajectory(policy, temperature)
        from toy.gpt import prefix_tree_logprobs  # toy/gpt.py builds on this file's MDP
        responses = self.all_pairs()[2]
        table = prefix_tree_logprobs(policy, self, temperature)               # (rows, V)
        token_lp = table.view(-1)[self.pair_states[:, :-1] * table.shape[1] + responses]  # (B, T)
        return sequence_logprob(token_lp, responses, EOS).view(self.n_prompts, -1)

    def trajectory_logprobs_by_trajectory(self, policy, temperature=1.0):
        """The same through policy.logprobs on every (prompt, response) pair: the reference that
        the prefix tree is tested and benchmarked against (bench.py --sections toy)."""
        prompts, mask, responses = self.all_pairs()
        token_lp = policy.logprobs(prompts, mask, responses, temperature)
        return sequence_logprob(token_lp, responses, EOS).view(self.n_prompts, -1)

    # ---- states ---------------------------------------------------------------------------------
    def state_ids(self, kind, prompts, responses):
        """(B, R+1) row of each state s_0..s_R in a table of the given kind.

        full     : one row per prefix (x, y_<t); letter prefixes are numbered as a complete
                   L-ary tree (children of node n are n*L+1 .. n*L+L), terminal states
                   (prefix + EOS) get n_tree + node. Fully expressive.
        position : one row per (x, t)               -> pi(y_t | x, t), a factorised policy
        markov   : one row per (x, last token)      -> pi(y_t | x, y_{t-1})
        """
        x = self.prompt_index(prompts)
        B, R = responses.shape
        node = torch.zeros(B, dtype=torch.long)
        last = torch.zeros(B, dtype=torch.long)      # 0 = start, 1 + letter, L + 1 = ended
        done = torch.zeros(B, dtype=torch.bool)
        ids = []
        for t in range(R + 1):
            if kind == "full":
                ids.append(x * 2 * self.n_tree + torch.where(done, self.n_tree + node, node))
            elif kind == "position":
                ids.append(x * (self.T + 1) + min(t, self.T))
            elif kind == "markov":
                ids.append(x * (self.L + 2) + last)
            else:
                raise ValueError(f"unknown table kind {kind!r}: use full, position or markov")
            if t == R:
                break
            tok = responses[:, t]
            is_letter = (tok >= 2) & ~done
            node = torch.where(is_letter, node * self.L + tok - 1, node)
            last = torch.where(is_letter, tok - 1, torch.where(done | (tok == EOS), self.L + 1, last))
            done = done | (tok == EOS)
        return torch.stack(ids, dim=1)

    def n_rows(self, kind):
        return self.n_prompts * {"full": 2 * self.n_tree, "position": self.T + 1,
                                 "markov": self.L + 2}[kind]

    # ---- occupancy measure ----------------------------------------------------------------------
    def occupancy(self, logd):
        """Exact rho^pi(s, a | x) from log d^pi(y|x) (n_prompts, N): (n_prompts, S * V) where a
        state-action pair is (full-table state row, action token). Sun24 Eq. (4) divided by p(x):
        each response adds d(y|x) to every (s_t, y_t) it visits, so rho sums to E[|y|].
        Differentiable."""
        responses = self.all_pairs()[2]
        sa = self.pair_states[:, :-1] * self.vocab_size + responses            # (B, T) flat (s_t, y_t)
        valid = responses != PAD
        w = logd.reshape(-1, 1).exp().expand_as(sa)
        rho = torch.zeros(self.n_rows("full") * self.vocab_size, dtype=w.dtype)
        rho = rho.index_add(0, sa[valid], w[valid])
        # the full table numbers prompt x's states x * 2 n_tree .. (x + 1) * 2 n_tree - 1, so the
        # flat array splits into one chunk per prompt, holding that prompt's state-action pairs only
        return rho.view(self.n_prompts, -1)

    # ---- the expert -----------------------------------------------------------------------------
    def _make_expert(self):
        g = torch.Generator().manual_seed(self.cfg.seed)
        L, T, K = self.L, self.T, self.cfg.n_modes
        if K > L:
            raise ValueError(f"n_modes={K} needs at least as many letters (n_letters={L}) "
                             "so that modes differ at every position")
        modes, supports, logps = [], [], []
        for x in range(self.n_prompts):
            if self.cfg.shared_expert:  # the same draws for every prompt
                g = torch.Generator().manual_seed(self.cfg.seed)
            # well separated: at each position the K modes use K different letters
            letters = torch.stack([torch.randperm(L, generator=g)[:K] for _ in range(T)], dim=1)
            lengths = torch.randint(2, T, (K,), generator=g)  # 2 .. T-1 letters, then EOS
            seqs = [[2 + int(c) for c in letters[k, :lengths[k]]] + [EOS] for k in range(K)]
            w = torch.rand(K, generator=g, dtype=torch.float64) + 0.5
            w = w / w.sum() * (1 - self.cfg.tail_mass - self.cfg.background)
            p = torch.zeros(len(self.responses), dtype=torch.float64)
            ids = [self.index[tuple(right_pad([s], PAD, T)[0].tolist())] for s in seqs]
            p[ids] = w
            tail = set()  # one-letter substitutions of the modes
            for s in seqs:
                for pos in range(len(s) - 1):
                    for c in range(L):
                        n = list(s)
                        n[pos] = 2 + c
                        j = self.index[tuple(right_pad([n], PAD, T)[0].tolist())]
                        if j not in ids:
                            tail.add(j)
            p[sorted(tail)] += self.cfg.tail_mass / len(tail)
            support = p > 0
            p += self.cfg.background / len(p)
            modes.append(ids)
            supports.append(support)
            logps.append(p.log())
        return modes, torch.stack(supports), torch.stack(logps)

    def gold_reward(self):
        """(n_prompts, N) gold reward r(x, y) = log d^exp(y|x) of the expert without style (with
        ToyConfig.style the demonstrator, expert_logprob, is that expert tilted towards "a"s)."""
        return self.gold_logprob

    def sample(self, logd, x, generator=None):
        """One response per prompt index in x (B,) drawn from d = exp(log d) (n_prompts, N), by
        inverting its CDF: u ~ U[0, sum_j d_j), then the first j with cdf_j > u (a response of
        probability 0 is never drawn). One uniform per sample, where torch.multinomial would draw
        one random number per table entry."""
        cdf = logd.exp().cumsum(-1)[x]                                          # (B, N)
        u = torch.rand(len(x), 1, generator=generator, dtype=cdf.dtype) * cdf[:, -1:]
        j = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_max(cdf.shape[1] - 1)
        return self.responses[j]

    def demonstrations(self, n, generator=None):
        """n expert demonstrations, prompts taken in turn: (prompts, prompt_mask, responses)."""
        x = torch.arange(n) % self.n_prompts
        prompts, mask = self.prompt_tokens(x)
        return prompts, mask, self.sample(self.expert_logprob, x, generator)

    def empirical_logprob(self, prompts, responses):
        """log of the empirical distribution of a set of demonstrations: (n_prompts, N)."""
        counts = torch.zeros(self.n_prompts, len(self.responses), dtype=torch.float64)
        counts.index_put_((self.prompt_index(prompts), self.response_ids(responses)),
                          torch.ones(len(responses), dtype=torch.float64), accumulate=True)
        return (counts / counts.sum(1, keepdim=True)).log()
