"""
The one policy interface that the toy tables and the GPT both implement, and the batch layout
they share. The objectives, PPO, soft policy iteration and the reward models only ever call
these methods, so they never know whether the policy is a table or a neural net.

Batch layout (the same everywhere):
  prompts      LongTensor (B, P)  left-padded with pad_id
  prompt_mask  BoolTensor (B, P)  True on real prompt tokens
  responses    LongTensor (B, R)  right-padded: every token after the first EOS is pad_id.
                                  A response with no EOS in its R tokens was truncated, not ended
                                  (Sun24 Sec. 3.1: EOS is termination, max length is truncation).
  response_mask(responses, eos_id)  True on the tokens up to and including the first EOS.

A policy (toy.tabular.TabularPolicy, nanoirl.model.GPT) answers:
  policy.logprobs(prompts, prompt_mask, responses, temperature=1.0) -> (B, R)
      log pi(y_t | x, y_<t) of the given tokens, from logits / temperature, at every response
      position. Values after the first EOS are finite but meaningless: mask them.
  policy.sample(prompts, prompt_mask, max_new_tokens, eos_id, pad_id, temperature=1.0,
                top_k=None, top_p=None, min_new_tokens=0, generator=None,
                rows=None, all_done=every_row_done) -> (responses, logprobs)
      responses (B, max_new_tokens) in the layout above; logprobs (B, max_new_tokens) of the
      sampled tokens under the temperature-scaled distribution before top-k/top-p filtering
      (the quantity PPO's ratio and KL penalty use, as in the TL;DR PPO code). Tokens are drawn
      by sample_tokens(probs, generator, rows); sampling stops once all_done(done) holds. The
      data-parallel wrapper of nanoirl/dist.py passes both, so that each rank samples its slice
      of a batch exactly as one process samples the whole batch.

A scalar model (reward, value or discriminator: toy.tabular.TabularScalar, nanoirl.model.ScalarGPT):
  model.state_scores(prompts, prompt_mask, responses) -> (B, R + 1)
      one scalar per state s_t = (x, y_<t), t = 0..R. Transitions are deterministic
      concatenation, so a state-action pair (s_t, y_t) *is* the next state s_{t+1}:
        value           V(s_t)             = out[:, t]
        token reward    r(s_t, y_t)        = out[:, t + 1]
        sequence score  r(x, y)            = out[:, n], n = number of valid response tokens
                                              (read at the last non-pad token, as in TL;DR PPO)
"""
import torch

NEG_INF = -1e9  # finite stand-in for log 0, so that masked products stay finite (0 * -inf = nan)


def response_mask(responses, eos_id):
    """(B, R) bool: True on tokens up to and including the first EOS."""
    is_eos = (responses == eos_id).long()
    eos_before = torch.cumsum(is_eos, dim=1) - is_eos  # EOS tokens strictly before position t
    return eos_before == 0


def pad_after_eos(responses, eos_id, pad_id):
    """Replace every token after the first EOS by pad_id (TL;DR PPO's truncation rule)."""
    return responses.masked_fill(~response_mask(responses, eos_id), pad_id)


def ends_with_eos(responses, eos_id):
    """(B,) bool: the response was terminated by EOS (not truncated at max length)."""
    return (responses == eos_id).any(dim=1)


def sequence_lengths(responses, eos_id):
    """(B,) long: number of valid response tokens (the EOS included)."""
    return response_mask(responses, eos_id).sum(dim=1)


def sequence_logprob(token_logprobs, responses, eos_id):
    """(B,) log d^pi(y|x) = sum of the valid per-token log-probs (Sun24 Eq. 5)."""
    return torch.where(response_mask(responses, eos_id), token_logprobs, 0.0).sum(dim=1)


def sequence_score(state_scores, responses, eos_id):
    """(B,) trajectory-level score r(x, y): the state score after the last valid token."""
    n = sequence_lengths(responses, eos_id)
    return state_scores.gather(1, n[:, None]).squeeze(1)


def left_pad(seqs, pad_id, length=None):
    """List of token lists -> (tokens (B, P) left-padded, mask (B, P))."""
    P = length or max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), P), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if len(s) > P:
            raise ValueError(f"sequence {i} has {len(s)} tokens, more than the length {P}")
        if len(s):
            tokens[i, P - len(s):] = torch.as_tensor(s, dtype=torch.long)
            mask[i, P - len(s):] = True
    return tokens, mask


def right_pad(seqs, pad_id, length=None):
    """List of token lists -> (B, R) right-padded with pad_id."""
    R = length or max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), R), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        s = list(s)[:R]
        if s:
            tokens[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
    return tokens


def sample_tokens(probs, generator=None, rows=None):
    """(B,) one token per row of probs (B, V): argmax(p / q) with q ~ Exp(1), which is exactly how
    torch.multinomial(probs, 1, generator=generator) draws one sample. rows = (lo, n): these B
    rows are rows lo .. lo + B of a batch of n, whose noise is drawn whole and sliced, so that a
    batch sampled in slices (one per rank: nanoirl/dist.py) draws what the whole batch draws."""
    lo, n = rows or (0, len(probs))
    device = probs.device if generator is None else generator.device  # a generator's draws run on its device
    q = torch.empty((n, probs.shape[1]), dtype=probs.dtype, device=device).exponential_(1, generator=generator)
    return (probs / q[lo:lo + len(probs)].to(probs.device)).argmax(-1)


def every_row_done(done):
    """The default stopping rule of sampling: every row of the batch has ended."""
    return bool(done.all())


def micro_batches(n, micro_batch_size=None, device=None):
    """The row indices 0 .. n-1 of a batch in consecutive micro-batches of at most micro_batch_size
    rows (None: one): gradient accumulation. Each micro-batch's loss is its share of the batch's
    loss, so that the accumulated gradient is the whole batch's."""
    return list(torch.arange(n, device=device).split(micro_batch_size or max(n, 1)))
