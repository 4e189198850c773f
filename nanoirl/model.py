"""
The Pythia (GPT-NeoX) language model in one file, written from scratch so that its state-dict keys
map 1:1 onto Hugging Face's `GPTNeoXForCausalLM`:
  GPT        logits at every position, per-token log-probs and KV-cache sampling: the policy
             interface of nanoirl/policy.py
  ScalarGPT  the same transformer with a Linear(d, 1) head: reward, value and discriminator models
Checkpoints: load_model(GPT, "pythia-1b" | directory | "random:pythia-1b") and save_model(model,
dir) of nanoirl/checkpoint.py, where the file formats live (this file does not import it).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from nanoirl.policy import NEG_INF, every_row_done, sample_tokens


@dataclass
class GPTConfig:
    vocab_size: int = 50304  # embedding rows; Pythia's tokenizer has 50277, the rest is padding
    block_size: int = 2048  # max positions (only checked, rotary has no position table)
    n_layer: int = 6
    n_head: int = 8
    n_embd: int = 512
    intermediate_size: int = None  # MLP width, 4 * n_embd when None
    rotary_pct: float = 0.25  # rotary on the first 25% of each head's dims, the rest untouched
    rotary_base: float = 10000.0
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        self.intermediate_size = self.intermediate_size or 4 * self.n_embd


def pythia(n_embd, n_layer, n_head, vocab_size=50304):
    return GPTConfig(vocab_size, 2048, n_layer, n_head, n_embd)


CONFIGS = {  # sizes from the Pythia paper / the Hub's config.json files
    "tiny": GPTConfig(vocab_size=64, block_size=64, n_layer=2, n_head=2, n_embd=32),  # tests, toy
    "pythia-70m": pythia(512, 6, 8), "pythia-160m": pythia(768, 12, 12),
    "pythia-410m": pythia(1024, 24, 16), "pythia-1b": pythia(2048, 16, 8),
    "pythia-1.4b": pythia(2048, 24, 16), "pythia-2.8b": pythia(2560, 32, 32),
    "pythia-6.9b": pythia(4096, 32, 32, 50432), "pythia-12b": pythia(5120, 36, 40, 50688),
}

# -----------------------------------------------------------------------------------------------
# the transformer


def rotary(positions, rot_dim, base, dtype):
    """cos, sin (T, rot_dim) of RoPE at the given positions, computed in fp32 like HF (fp64 for
    fp64 models), then cast. Cheap enough to recompute each call, so no cached position table."""
    ft = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = 1.0 / base ** (torch.arange(0, rot_dim, 2, device=positions.device, dtype=ft) / rot_dim)
    freqs = positions.to(ft)[:, None] * inv_freq[None, :]  # (T, rot_dim/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # rotate-half layout: frequency i sits at i and i + rot/2
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x, cos, sin):
    """Rotate the first rot_dim dims of x (B, nh, T, hs) pairwise (i, i + rot_dim/2), GPT-NeoX's
    rotate-half convention (not interleaved pairs); the remaining dims pass through unchanged."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    x_rot = x_rot * cos + torch.cat((-x2, x1), dim=-1) * sin
    return torch.cat((x_rot, x_pass), dim=-1)


def attention_mask_4d(key_mask, T):
    """(B, S) bool, True on real tokens -> (B, 1, T, S) bool for the last T of the S positions:
    causal, no padding keys, and every query sees itself, so a padding query attends to one key,
    not none: some SDPA kernels return NaN for an all-False row, and a NaN value vector would
    poison real tokens too (a masked weight 0 times NaN is NaN)."""
    S = key_mask.shape[1]
    q = torch.arange(S - T, S, device=key_mask.device)[:, None]  # (T, 1) query positions
    k = torch.arange(S, device=key_mask.device)[None, :]  # (1, S) key positions
    return (((k <= q) & key_mask[:, None, :]) | (k == q))[:, None]


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head, self.head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        self.query_key_value = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # fused, interleaved per head
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x, cos, sin, mask, cache=None, pos=0):
        B, T, C = x.shape
        # GPT-NeoX lays the fused projection out per head: [q_h, k_h, v_h] for each head h
        qkv = self.query_key_value(x).view(B, T, self.n_head, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.head_dim, dim=-1)  # (B, nh, T, hs) each
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:  # static KV cache (B, nh, S, hs): write positions pos.., read 0..pos+T
            cache[0][:, :, pos:pos + T] = k
            cache[1][:, :, pos:pos + T] = v
            k, v = cache[0][:, :, :pos + T], cache[1][:, :, :pos + T]
        # SDPA's default scale is head_dim^-0.5, as in GPT-NeoX; without a mask, plain causal
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.dense(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(cfg.n_embd, cfg.intermediate_size)
        self.dense_4h_to_h = nn.Linear(cfg.intermediate_size, cfg.n_embd)

    def forward(self, x):
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x)))  # exact erf GELU, not tanh


class Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.attention = Attention(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, cache=None, pos=0):
        # parallel residual (GPT-NeoX): attention and MLP both read x, neither reads the other
        a = self.attention(self.input_layernorm(x), cos, sin, mask, cache, pos)
        return x + a + self.mlp(self.post_attention_layernorm(x))


class GPTNeoX(nn.Module):
    """Embedding, layers, final LayerNorm -> hidden states (B, T, C). Named `gpt_neox` in both
    models so that the keys are HF's: gpt_neox.embed_in.weight, gpt_neox.layers.0.attention..."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.embed_in = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg.n_layer)])
        self.final_layer_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)

    def forward(self, idx, attention_mask=None, cache=None, pos=0, grad_checkpoint=False):
        """idx (B, T) at positions pos..pos+T-1. attention_mask (B, pos+T), True/1 on real tokens,
        None = no padding. Positions are a plain arange even with left padding: rotary attention
        depends only on the distance between two tokens, so the pad tokens in front shift every
        real token equally and the attention among real tokens is unchanged."""
        T, c = idx.shape[1], self.config
        if pos + T > c.block_size:
            raise ValueError(f"{pos + T} tokens, more than the block_size {c.block_size}")
        x = self.embed_in(idx)  # (B, T, C)
        cos, sin = rotary(torch.arange(pos, pos + T, device=idx.device),
                          int(c.n_embd // c.n_head * c.rotary_pct), c.rotary_base, x.dtype)
        mask = None if attention_mask is None else attention_mask_4d(attention_mask.bool(), T)
        for i, layer in enumerate(self.layers):
            if grad_checkpoint and torch.is_grad_enabled():  # recompute activations in backward
                x = checkpoint(layer, x, cos, sin, mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, None if cache is None else cache[i], pos)
        return self.final_layer_norm(x)


def init_weights(module):
    """GPT-NeoX's init: N(0, 0.02) for Linear and Embedding, zero biases; LayerNorm stays (1, 0)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def upcast(x):
    """Log-softmax over 50k logits in bf16 keeps ~3 digits: do it in fp32 (fp64 stays fp64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def fp32_linear(x, layer):
    """layer(x) in fp32 (fp64 stays fp64), also under bf16 autocast: the output heads. A logit of
    magnitude 16-32 has a bf16 spacing of 0.125, so a bf16 head puts up to ~0.1 nats of rounding
    into every log-prob, KL term and PPO ratio, and upcasting its output cannot take it out."""
    with torch.autocast(x.device.type, enabled=False):
        bias = None if layer.bias is None else upcast(layer.bias)
        return F.linear(upcast(x), upcast(layer.weight), bias)


# -----------------------------------------------------------------------------------------------
# the two models


class GPT(nn.Module):
    """GPT-NeoX causal LM: logits, per-token log-probs and sampling (the policy of policy.py)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.gpt_neox = GPTNeoX(config)
        self.embed_out = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # untied, no bias
        self.register_buffer("allowed", None, persistent=False)  # see set_allowed_tokens
        self.gradient_checkpointing = False  # True: recompute each layer in backward (fits 2.8b)
        self.apply(init_weights)

    def set_allowed_tokens(self, ids):
        """Restrict the support to the token ids `ids` (None lifts it): every other logit becomes
        NEG_INF. The toy MDP uses it so that the GPT's actions are exactly the MDP's."""
        allowed = None
        if ids is not None:
            allowed = torch.zeros_like(self.embed_out.weight[:, 0], dtype=torch.bool)  # (vocab,)
            allowed[torch.as_tensor(ids, dtype=torch.long)] = True
        self.allowed = allowed  # a (non-persistent) buffer: it follows .to(device), stays out of saves

    def head(self, h):
        """Hidden states (..., C) -> fp32 logits (..., vocab), restricted to the allowed tokens."""
        logits = fp32_linear(h, self.embed_out)
        return logits if self.allowed is None else logits.masked_fill(~self.allowed, NEG_INF)

    def forward(self, idx, attention_mask=None):
        """idx (B, T) -> logits (B, T, vocab) at every position (PPO and IRL need all of them)."""
        return self.head(self.gpt_neox(idx, attention_mask, grad_checkpoint=self.gradient_checkpointing))

    def logprobs(self, prompts, prompt_mask, responses, temperature=1.0):
        """(B, R) log pi(y_t | x, y_<t) from logits / temperature (temperature 0 reads as 1).
        The input is cat(prompts, responses[:, :-1]): the last response token is never an input."""
        P, inputs = prompts.shape[1], responses[:, :-1]
        idx = torch.cat([prompts, inputs], dim=1)  # (B, P + R - 1)
        mask = torch.cat([prompt_mask.bool(), torch.ones_like(inputs, dtype=torch.bool)], dim=1)
        h = self.gpt_neox(idx, mask, grad_checkpoint=self.gradient_checkpointing)[:, P - 1:]  # (B, R, C)
        # the vocab projection only on the R response positions: (B, R, 50k) instead of (B, P+R, 50k)
        logp = F.log_softmax(self.head(h) / (temperature or 1.0), dim=-1)
        return logp.gather(-1, responses[..., None]).squeeze(-1)

    @torch.no_grad()
    def sample(self, prompts, prompt_mask, max_new_tokens, eos_id, pad_id, temperature=1.0,
               top_k=None, top_p=None, min_new_tokens=0, generator=None, rows=None, all_done=every_row_done):
        """(responses, logprobs), both (B, max_new_tokens), as policy.py defines them. The prompt
        is run once (prefill) into a static KV cache of P + max_new_tokens positions, then one
        token per step. temperature 0 = greedy (its log-probs are reported at temperature 1).
        logprobs are those of the temperature-scaled distribution before top-k, top-p, the
        min_new_tokens EOS ban and the pad ban (pad is never sampled, on any path): the same
        numbers logprobs() recomputes on the responses."""
        (B, P), c, w = prompts.shape, self.config, self.embed_out.weight
        autocast = torch.is_autocast_enabled(w.device.type)  # then K, V come out in autocast's dtype
        dtype = torch.get_autocast_dtype(w.device.type) if autocast else w.dtype
        S, hs = P + max_new_tokens, c.n_embd // c.n_head
        cache = w.new_empty(c.n_layer, 2, B, c.n_head, S, hs, dtype=dtype)  # [layer][K/V]: (B, nh, S, hs)
        key_mask = torch.ones(B, S, dtype=torch.bool, device=w.device)
        key_mask[:, :P] = prompt_mask
        responses = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=w.device)
        logprobs = torch.zeros(B, max_new_tokens, dtype=upcast(w[:0]).dtype, device=w.device)
        done = torch.zeros(B, dtype=torch.bool, device=w.device)
        h = self.gpt_neox(prompts, key_mask[:, :P], cache, 0)[:, -1]  # (B, C) prefill
        for t in range(max_new_tokens):
            logits = self.head(h) / (temperature or 1.0)  # (B, vocab)
            logp = F.log_softmax(logits, dim=-1)
            if t < min_new_tokens:  # EOS banned: a sampling filter like top-k, not in logp
                logits[:, eos_id] = -float("inf")
            if pad_id is not None and pad_id != eos_id:  # pad is never a response token
                logits[:, pad_id] = -float("inf")
            if temperature == 0:
                token = logits.argmax(dim=-1)
            else:
                probs = F.softmax(filter_top_k_top_p(logits, top_k, top_p), dim=-1)
                token = sample_tokens(probs, generator, rows)  # = torch.multinomial(probs, 1)
            token = token.masked_fill(done, pad_id)  # everything after the first EOS is pad
            responses[:, t], logprobs[:, t] = token, logp.gather(-1, token[:, None]).squeeze(-1)
            done |= token == eos_id
            if t == max_new_tokens - 1 or all_done(done):  # every row has finished
                break
            h = self.gpt_neox(token[:, None], key_mask[:, :P + t + 1], cache, P + t)[:, -1]
        return responses, logprobs


def filter_top_k_top_p(logits, top_k=None, top_p=None):
    """logits (B, V) with everything outside the top k, then outside the smallest set of tokens
    whose probability reaches top_p, set to -inf (the most likely token always survives)."""
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # mass before this token already reaches top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -float("inf")))
    return logits


def new_score_head(n_embd):
    """Linear(d, 1) with weight ~ N(0, 1/sqrt(d + 1)) and bias 0, as in the TL;DR PPO code."""
    score = nn.Linear(n_embd, 1)
    nn.init.normal_(score.weight, std=1 / math.sqrt(n_embd + 1))
    nn.init.zeros_(score.bias)
    return score


class ScalarGPT(nn.Module):
    """The GPT-NeoX transformer plus a scalar head: a reward, value or discriminator model.
    score_offset is subtracted from every score: the TL;DR reference reward models store the
    mean score of the reference summaries there, so that they score about 0."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.gpt_neox = GPTNeoX(config)
        self.gradient_checkpointing = False
        self.apply(init_weights)
        self.score = new_score_head(config.n_embd)
        self.score_offset = 0.0

    def forward(self, idx, attention_mask=None):
        """idx (B, T) -> one fp32 scalar per position (B, T), read at that position's hidden state."""
        h = self.gpt_neox(idx, attention_mask, grad_checkpoint=self.gradient_checkpointing)
        return fp32_linear(h, self.score).squeeze(-1) - self.score_offset

    def state_scores(self, prompts, prompt_mask, responses):
        """(B, R + 1) scalar of each state s_t = (x, y_<t): read at the last token of s_t, i.e.
        the last prompt token for t = 0 and y_{t-1} for t >= 1 (prompts are left-padded)."""
        idx = torch.cat([prompts, responses], dim=1)  # (B, P + R)
        mask = torch.cat([prompt_mask.bool(), torch.ones_like(responses, dtype=torch.bool)], dim=1)
        return self(idx, mask)[:, prompts.shape[1] - 1:]
