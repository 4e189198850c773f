"""
Speed and memory at Pythia scale, side by side with Hugging Face transformers'
GPTNeoXForCausalLM built from the same random weights, in the same dtype, on the same batch.

    python bench.py --json bench.json              # pythia-1b, every section, on CUDA
    python bench.py --config pythia-2.8b --sections ppo --grad-checkpoint --ppo-grid 64x53
    python bench.py --config tiny --device cpu     # small shapes (SIZES), seconds: every code path
    python bench.py --device cpu --sections memory --batch 8 --prompt-len 512 --response-len 53

Sections: train (forward + backward + AdamW), sample (rollout sampling vs `generate`), ppo (one
PPO iteration as train_mlirl.py runs it, four models), memory (that iteration's peak estimated
without a GPU: weights and AdamW states counted, activations tracked on fake tensors), toy (exact
enumeration; memory and toy always run on the CPU), numerics (log-probs under bf16 autocast
against fp32, with the output head in fp32 as the models compute it and in bf16).
Numerics (docs/operations.md, "Pythia weights"): fp32 master weights, forward passes under bf16 autocast, loss and
log-softmax in fp32, fused AdamW, for ours and transformers' alike (fp32 throughout on CPU).
Before timing, both models must give the same fp32 logits on the benchmark batch (<= 1e-4).
With N = every parameter but the input embedding (a lookup; the untied head is a matmul):
  training FLOPs per token  6 N + 12 L d T   (PaLM App. B; attention counted without the causal half)
  sampling floor            prefill FLOPs / matmul rate + the sum over decode steps of
                            max(bytes read / copy bandwidth, FLOPs / matmul rate)   (sampling_floor)
The matmul rate and copy bandwidth are measured in the same run. Times: medians of synchronized
runs after warm-up runs. Peak memory: torch.cuda.max_memory_allocated, reset for each measurement.
"""
import argparse
import contextlib
import copy
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

from nanoirl.model import CONFIGS as MODEL_CONFIGS, GPT, GPTConfig, upcast
from nanoirl.cli import nonnegative_int, positive_int

# model.CONFIGS["tiny"] is the toy's (64 positions); the benchmark's tiny has room for 512 + 53
CONFIGS = {**MODEL_CONFIGS, "tiny": GPTConfig(vocab_size=512, block_size=1024, n_layer=2, n_head=4, n_embd=64)}
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12)]  # dense, datasheets
PPO_TARGET_GB = {"pythia-1b": 40, "pythia-2.8b": 80}  # memory targets of a PPO iteration at batch 64
HF_SAMPLING = dict(do_sample=True, top_k=0, top_p=1.0)  # generate's default top_k is 50: turn it off
EOS, PAD = 0, 1  # Pythia's <|endoftext|> and <|padding|>
SIZES = {"cuda": dict(batch=8, sample_batch=64, prompt_len=512, response_len=53, warmup=2, repeats=5,
                      ppo_grid="16x53,32x53,64x53,64x106", toy_grid="3x5,4x6,5x6"),  # TL;DR's shapes
         "cpu": dict(batch=4, sample_batch=8, prompt_len=64, response_len=16, warmup=1, repeats=5,
                     ppo_grid="4x16,8x16,8x32", toy_grid="3x5,4x6")}  # defaults of the shape flags


def n_params(cfg):
    """(all parameters, N = all but the input embedding), counted on a meta-device GPT."""
    with torch.device("meta"):
        total = sum(p.numel() for p in GPT(cfg).parameters())
    return total, total - cfg.vocab_size * cfg.n_embd


def ppo_state_gb(cfg):
    """GB that a PPO iteration of train_mlirl.py holds before any activation: policy and value
    model in fp32 with AdamW's two fp32 moments (12 bytes a weight), the fp32 reference and reward
    models (4 bytes), and one model's fp32 gradients at a time (ppo.py detail 13), the policy's
    being the larger. The value and reward models are ScalarGPTs: no vocabulary head."""
    P = n_params(cfg)[0]
    S = P - cfg.vocab_size * cfg.n_embd + cfg.n_embd + 1  # the score head Linear(d, 1)
    return {"policy": 12 * P / 1e9, "value": 12 * S / 1e9, "ref": 4 * P / 1e9, "reward": 4 * S / 1e9,
            "grads": 4 * P / 1e9}


def layer_params(cfg):
    """One Pythia layer: QKV 3d^2 + 3d, output d^2 + d, MLP 8d^2 + 5d (4d wide), two LayerNorms 4d."""
    return 12 * cfg.n_embd ** 2 + 13 * cfg.n_embd


def fsdp_state_gb(cfg, ranks):
    """GB per GPU of ppo_state_gb under torchrun --fsdp with `ranks` ranks: every model's weights,
    AdamW moments and gradients sharded 1/ranks (FSDP2, nanoirl/dist.py), plus what FSDP2 holds
    whole during a forward: the root's own weights (the embedding, the head and the final norm,
    one unit) and two transformer layers (the one computing, the next one prefetched), in fp32.
    DDP replicates: ppo_state_gb on every GPU, whatever the rank count."""
    P, layer = n_params(cfg)[0], layer_params(cfg)
    root = P - cfg.n_layer * layer
    return sum(ppo_state_gb(cfg).values()) / ranks + 4 * (root + 2 * layer) / 1e9


def estimate_micro_step_gb(cfg, B, P, R, grad_checkpoint):
    """Estimated peak GB of one PPO policy micro-step (ppo.policy_loss: log-probs of R response
    tokens after P prompt tokens, under bf16 autocast, then backward) above the policy's weights
    and gradients: activations and temporaries, counted by torch's MemTracker on fake tensors on
    the CPU. No GPU, no memory, no weights; CPU kernels stand in for CUDA's, so workspaces differ."""
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:
        raise SystemExit(f"the memory section needs torch's MemTracker (torch >= 2.5), not {torch.__version__}")
    with FakeTensorMode():
        model = GPT(cfg)
        model.gradient_checkpointing = grad_checkpoint
        tracker = MemTracker()
        tracker.track_external(model)
        with tracker:
            prompts = torch.randint(2, cfg.vocab_size, (B, P))
            responses = torch.randint(2, cfg.vocab_size, (B, R))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logprobs = model.logprobs(prompts, torch.ones_like(prompts, dtype=torch.bool), responses)
            (logprobs.float() * torch.randn(B, R)).mean().backward()
        peak = {str(k).split(".")[-1]: v for k, v in tracker.get_tracker_snapshot("peak")[torch.device("cpu")].items()}
    return (peak["Total"] - peak["PARAM"] - peak["GRAD"]) / 1e9


def train_flops_per_token(cfg, T):
    """6 N (forward 2 N, backward 4 N) + 12 L d T (QK^T and AV: 2 d T each per token and layer, x3)."""
    return 6 * n_params(cfg)[1] + 12 * cfg.n_layer * cfg.n_embd * T


def sampling_floor(cfg, B, P, R, bandwidth, rate, elem_bytes=2):
    """(prefill s, decode s): the least time any implementation needs to sample R tokens for B
    prompts of P tokens. Prefill: the body on all B P positions, the head on the last, causal
    attention (P^2/2 pairs, 4 d FLOPs each per layer), at the matmul rate. Then R - 1 decode
    steps; step t reads every matmul weight and the K, V cache of S = P + t positions (2 L B S d
    elements) or does 2 N B + 4 L d B S FLOPs, whichever takes longer."""
    N, head, L, d = n_params(cfg)[1], cfg.vocab_size * cfg.n_embd, cfg.n_layer, cfg.n_embd
    prefill = (2 * (N - head) * B * P + 2 * head * B + 2 * L * d * B * P * P) / rate
    decode = sum(max(elem_bytes * (N + 2 * L * B * (P + t) * d) / bandwidth,
                     (2 * N * B + 4 * L * d * B * (P + t)) / rate) for t in range(1, R))
    return prefill, decode


# -----------------------------------------------------------------------------------------------
# measuring, and the two models


def clock(fn, device):
    """(seconds, result) of fn(), synchronized before and after: CUDA work is asynchronous."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def peak_gb(device, reset=False):
    if device.type == "cuda" and reset:
        torch.cuda.reset_peak_memory_stats()
    return torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None


def measure(fn, device, warmup, repeats):
    """(median seconds, peak GB or None, last result) of `repeats` runs of fn after `warmup` runs."""
    for _ in range(warmup):
        fn()
    peak_gb(device, reset=True)
    runs = [clock(fn, device) for _ in range(repeats)]
    return statistics.median(t for t, _ in runs), peak_gb(device), runs[-1][1]


def ceilings(device, args):
    """This device's matmul rate (compute dtype, random data) and copy bandwidth (bytes read +
    written, a buffer far larger than L2), each the median of 10-call batches."""
    n, numel, dt = (8192, 2 ** 28, torch.bfloat16) if device.type == "cuda" else (1024, 2 ** 24, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
    x = torch.randn(numel, device=device)
    y = torch.empty_like(x)
    t_mm = measure(lambda: [a @ b for _ in range(10)], device, 2, args.repeats)[0] / 10
    t_cp = measure(lambda: [y.copy_(x) for _ in range(10)], device, 2, args.repeats)[0] / 10
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    return {"device": name, "matmul_flops_per_s": 2 * n ** 3 / t_mm, "copy_bytes_per_s": 2 * x.nbytes / t_cp,
            "compute_dtype": str(dt)[6:],
            "datasheet_bf16_flops_per_s": next((v for k, v in PEAK_BF16 if k in name), None)}


def amp(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def random_gpt(cfg, device, seed=0):
    torch.manual_seed(seed)
    with torch.device(device):
        return GPT(cfg)  # fp32 master weights


def hf_twin(ours):
    """transformers' GPTNeoXForCausalLM with our config and weights (None when not installed)."""
    try:
        import transformers
    except ImportError:
        print("note: transformers is not installed: its columns are skipped")
        return None
    c = ours.config
    rope = dict(rope_type="default", rope_theta=c.rotary_base, partial_rotary_factor=c.rotary_pct)
    hc = transformers.GPTNeoXConfig(
        vocab_size=c.vocab_size, hidden_size=c.n_embd, num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, intermediate_size=c.intermediate_size,
        max_position_embeddings=c.block_size, layer_norm_eps=c.layer_norm_eps,
        rope_parameters=rope, rotary_pct=c.rotary_pct, rotary_emb_base=c.rotary_base,  # 5.x and 4.x names
        use_parallel_residual=True, hidden_act="gelu", tie_word_embeddings=False, attention_dropout=0.0,
        hidden_dropout=0.0, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD, attn_implementation="sdpa")
    with torch.device(ours.embed_out.weight.device):
        hf = transformers.GPTNeoXForCausalLM(hc)
    head = "lm_head." if hasattr(hf, "lm_head") else "embed_out."  # transformers 5 renamed the head
    hf.load_state_dict({k.replace("embed_out.", head): v for k, v in ours.state_dict().items()})  # strict
    return hf


@torch.no_grad()
def parity(ours, hf, idx, mask, device):
    """||ours - hf|| / ||hf|| of the logits on the real tokens of idx, in fp32 and under autocast.
    A fair comparison first: fp32 beyond 1e-4 means they are not the same model, and stops here."""
    keep = torch.ones_like(idx, dtype=torch.bool) if mask is None else mask.bool()
    err = []
    for ctx in (contextlib.nullcontext(), amp(device)):
        with ctx:
            a = ours(idx, mask).float()
            b = hf(input_ids=idx, attention_mask=mask, use_cache=False).logits.float()
        err.append(((a - b)[keep].norm() / b[keep].norm()).item())
    if not err[0] <= 1e-4:
        raise SystemExit(f"ours and transformers' fp32 logits differ by {err[0]:.2e} > 1e-4: "
                         "not the same model")
    return {"parity_fp32": err[0], "parity_amp": err[1]}


def prompts_batch(cfg, B, P, device, seed=0):
    """B random prompts left-padded to P tokens (real lengths P/2..P, as TL;DR's are padded)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(2, cfg.vocab_size, (B, P), generator=g)
    mask = torch.arange(P)[None, :] >= P - torch.randint(P // 2, P + 1, (B, 1), generator=g)
    return idx.masked_fill(~mask, PAD).to(device), mask.to(device)


def row(metric, ours, hf=None, ratio=None, target="", met=None):
    return {"metric": metric, "ours": ours, "transformers": hf, "ratio": ratio, "target": target,
            "met": None if met is None else bool(met)}


# -----------------------------------------------------------------------------------------------
# the sections: each returns a dict of numbers, its rows of the table under "rows"


def twins(args, device, idx, mask=None):
    """Our GPT with random weights and transformers' copy of it (None when not installed), with
    the parity of their logits on idx (the benchmark batch, or its first rows)."""
    ours = random_gpt(CONFIGS[args.config], device)
    hf = hf_twin(ours)
    return ours, hf, parity(ours, hf, idx[:4], None if mask is None else mask[:4], device) if hf else {}


def bench_train(args, device, hw):
    cfg, B, T = CONFIGS[args.config], args.batch, args.prompt_len + args.response_len
    x = torch.randint(2, cfg.vocab_size, (B, T + 1), device=device)
    x, y = x[:, :-1], x[:, 1:]
    ours, hf, res = twins(args, device, x)
    res.update(batch=B, seq_len=T, flops_per_token=train_flops_per_token(cfg, T))
    peak_rate = hw["datasheet_bf16_flops_per_s"] or hw["matmul_flops_per_s"]
    ours.gradient_checkpointing = args.grad_checkpoint
    if hf and args.grad_checkpoint:  # transformers 5 renamed gradient_checkpointing_enable
        (getattr(hf, "activation_checkpointing_enable", None) or hf.gradient_checkpointing_enable)()
    for name, model, logits in (("ours", ours, lambda: ours(x)),
                                ("hf", hf, lambda: hf(input_ids=x, use_cache=False).logits)):
        if model is None:
            continue
        opt = torch.optim.AdamW(model.train().parameters(), lr=3e-6, eps=1e-5, fused=True)

        def step():
            with amp(device):  # the forward under autocast; the loss in fp32, backward outside
                out = logits()
            F.cross_entropy(upcast(out).flatten(0, 1), y.flatten()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        try:  # both models' weights stay resident for both runs: the peaks compare fairly
            s, gb, _ = measure(step, device, args.warmup, args.repeats)
            flops = res["flops_per_token"] * B * T / s
            res[name] = {"step_s": s, "tokens_per_s": B * T / s, "peak_gb": gb, "mfu": flops / peak_rate,
                         "mfu_of_measured_matmul": flops / hw["matmul_flops_per_s"]}
        except torch.OutOfMemoryError:
            res[name] = None
        del opt
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
    o, h = res["ours"] or {}, res.get("hf") or {}
    ratio = o and h and o["tokens_per_s"] / h["tokens_per_s"] or None
    on_target = args.config == "pythia-1b" and "H100" in hw["device"] and o
    res["rows"] = [row(f"train tokens/s (B={B}, T={T})", o.get("tokens_per_s"), h.get("tokens_per_s"), ratio,
                       ">= 1.3x (GPU, 1b)",
                       ratio >= 1.3 if ratio and args.config == "pythia-1b" and device.type == "cuda" else None),
                   row("train MFU" + ("" if hw["datasheet_bf16_flops_per_s"] else " (of measured matmul)"),
                       o.get("mfu"), h.get("mfu"), None, ">= 0.45 (H100, 1b)",
                       o["mfu"] >= 0.45 if on_target else None),
                   row("train peak GB", o.get("peak_gb"), h.get("peak_gb"))]
    return res


def bench_sample(args, device, hw):
    cfg, B, P, R = CONFIGS[args.config], args.sample_batch, args.prompt_len, args.response_len
    p, pm = prompts_batch(cfg, B, P, device)
    ours, hf, res = twins(args, device, p, pm)
    prefill, decode = sampling_floor(cfg, B, P, R, hw["copy_bytes_per_s"], hw["matmul_flops_per_s"],
                                     2 if device.type == "cuda" else 4)  # autocast reads bf16 weight copies
    res.update(batch=B, prompt_len=P, new_tokens=R, temperature=0.7, floor_s=prefill + decode,
               floor_prefill_s=prefill, floor_decode_s=decode)
    fns = {"ours": lambda: ours.sample(p, pm, R, EOS, PAD, temperature=0.7)[0].shape[1],
           "hf": hf and (lambda: hf.generate(input_ids=p, attention_mask=pm, temperature=0.7, max_new_tokens=R,
                                             eos_token_id=EOS, pad_token_id=PAD, **HF_SAMPLING).shape[1] - P)}
    for name, fn in fns.items():
        if fn:
            with amp(device):
                s, gb, n = measure(fn, device, args.warmup, args.repeats)
            res[name] = {"s": s, "tokens_per_s": B * R / s, "peak_gb": gb, "new_tokens": n}
    o, h = res["ours"], res.get("hf") or {}
    ratio = h and o["tokens_per_s"] / h["tokens_per_s"] or None
    res["rows"] = [row(f"sample tokens/s ({B}x{P}+{R})", o["tokens_per_s"], h.get("tokens_per_s"), ratio,
                       ">=3x or <=1.3 floor", (ratio or 0) >= 3 or o["s"] <= 1.3 * res["floor_s"]
                       if args.config == "pythia-1b" and device.type == "cuda" else None),
                   row("sample s; ratio = ours / floor", o["s"], h.get("s"), o["s"] / res["floor_s"],
                       f"floor {res['floor_s']:.3g} s")]
    return res


def bench_ppo(args, device, hw):
    """One PPO iteration = the two calls of mlirl.ppo_policy_step: ppo.rollout (sampling, then the
    policy, reference, value and reward forward passes) and ppo.update (4 epochs, micro-batches of
    --batch), with the four fp32 models of train_mlirl.py and one AdamW over policy and value."""
    from nanoirl import ppo
    from nanoirl.task import scalar_from_policy
    cfg = CONFIGS[args.config]
    state = ppo_state_gb(cfg)
    limit = PPO_TARGET_GB.get(args.config)
    res = {"state_gb": state, "static_gb": sum(state.values()), "micro_batch": args.batch, "grid": [], "rows": []}
    res["rows"].append(row("ppo GB before activations (ppo_state_gb)", res["static_gb"],
                           target=f"< {limit} GB" if limit else "", met=res["static_gb"] < limit if limit else None))
    memory = torch.cuda.get_device_properties(device).total_memory / 1e9 if device.type == "cuda" else math.inf
    if res["static_gb"] > memory:  # it cannot run: say so rather than spend minutes reaching OOM
        print(f"ppo: skipped, its weights and AdamW states need {res['static_gb']:.1f} GB > {memory:.1f} GB here")
        return res
    policy = random_gpt(cfg, device)
    with torch.device(device):  # build the reward model's head on the GPU, not on the CPU first
        ref, reward = copy.deepcopy(policy), scalar_from_policy(policy)
    value = copy.deepcopy(reward)  # the value model starts as the reward model
    policy.gradient_checkpointing = value.gradient_checkpointing = args.grad_checkpoint
    reward_fn, opt = ppo.reward_from_scorer(reward, "sequence", EOS), None
    for B, R in args.ppo_grid:
        pcfg = ppo.PPOConfig(response_length=R, micro_batch_size=min(args.batch, B), eos_id=EOS, pad_id=PAD,
                             autocast_dtype="bfloat16" if device.type == "cuda" else None)
        opt = opt or ppo.make_optimizer(policy, value, pcfg)  # its state persists, as in training
        p, pm = prompts_batch(cfg, B, args.prompt_len, device, seed=B)
        point, times, ro = {"batch": B, "response_len": R, "s": None, "peak_gb": None}, [], None
        try:  # an iteration takes seconds: one warm-up, half the repeats
            for i in range(1 + max(args.repeats // 2, 1)):
                peak_gb(device, reset=i == 1)
                phase = "rollout"
                r_s, ro = clock(lambda: ppo.rollout(policy, ref, value, p, pm, reward_fn, pcfg), device)
                phase = "update"
                times.append((r_s, clock(lambda: ppo.update(policy, value, opt, ro, pcfg), device)[0]))
            r_s, u_s = (statistics.median(t[k] for t in times[1:]) for k in (0, 1))
            point.update(rollout_s=r_s, update_s=u_s, s=r_s + u_s, peak_gb=peak_gb(device))
        except torch.OutOfMemoryError:
            point["peak_gb"] = f"OOM ({phase})"
        del ro
        torch.cuda.empty_cache()
        res["grid"].append(point)
        on_target = limit and B == 64
        fits = isinstance(point["peak_gb"], float) and point["peak_gb"] < limit if on_target else None
        res["rows"].append(row(f"ppo iteration s / peak GB (B={B}, R={R})", f"{fmt(point['s'])} / "
                               f"{fmt(point['peak_gb'])}", target=f"< {limit} GB" if on_target else "", met=fits))
    return res


def bench_memory(args, device, hw):
    """The PPO iteration's memory without a GPU: ppo_state_gb plus estimate_micro_step_gb for one
    policy micro-batch of --batch sequences, with and without activation checkpointing."""
    cfg, T = CONFIGS[args.config], args.prompt_len + args.response_len
    limit = PPO_TARGET_GB.get(args.config)
    res, state = {"rows": []}, sum(ppo_state_gb(cfg).values())
    for ckpt in (False, True):
        extra = estimate_micro_step_gb(cfg, args.batch, args.prompt_len, args.response_len, ckpt)
        res["checkpointing" if ckpt else "plain"] = {"micro_step_gb": extra, "ppo_peak_gb": state + extra}
        res["rows"].append(row(f"ppo peak GB, estimated, micro-batch {args.batch}x{T}" + (", checkpointing" if ckpt else ""),
                               state + extra, target=f"< {limit} GB if measured" if limit else ""))
    for ranks in (2, 4, 8):  # torchrun --fsdp: per GPU, the micro-batch's activations with checkpointing
        gb = fsdp_state_gb(cfg, ranks) + res["checkpointing"]["micro_step_gb"]
        res[f"fsdp_{ranks}_ppo_peak_gb"] = gb
        res["rows"].append(row(f"ppo peak GB per GPU, --fsdp on {ranks} ranks, checkpointing, estimated", gb))
    return res


def bench_numerics(args, device, hw):
    """Per-token log-probs of random responses under bf16 autocast against fp32 throughout, with
    the output head in fp32 (model.fp32_linear, ours) and in bf16 (autocast's default; the log-
    softmax in fp32 either way). Random init gives logits of |.| < ~3; a trained Pythia's reach
    16-32, so the head is also scaled (x10) to logits of that size. The third row is the rounding
    that the fp32 head removes: the two heads on the same hidden states. Runs on CPU autocast too."""
    cfg, B, P, R = CONFIGS[args.config], args.batch, args.prompt_len, args.response_len
    model = random_gpt(cfg, device)
    prompts, mask = prompts_batch(cfg, B, P, device)
    y = torch.randint(2, cfg.vocab_size, (B, R), generator=torch.Generator().manual_seed(1)).to(device)
    bf16_head = lambda h: upcast(model.embed_out(h))  # what autocast alone would give
    res = {"rows": []}
    for scale in (1, 10):
        with torch.no_grad():
            model.embed_out.weight.mul_(scale)
            ref = model.logprobs(prompts, mask, y)
            logit = model.head(model.gpt_neox(prompts, mask)).abs().max().item()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                ours = model.logprobs(prompts, mask, y)
                model.head = bf16_head
                theirs = model.logprobs(prompts, mask, y)
                del model.head  # back to GPT.head
            model.embed_out.weight.div_(scale)
        for name, lp, base in (("fp32 head", ours, ref), ("bf16 head", theirs, ref),
                               ("bf16 head vs fp32 head, same trunk", theirs, ours)):
            err = (lp - base).abs()
            point = {"max_abs_logit": logit, "max_err": err.max().item(), "mean_err": err.mean().item(),
                     "seq_sum_err": (lp - base).sum(1).abs().max().item()}
            res[f"head_x{scale}_{name.split(',')[0].replace(' ', '_')}"] = point
            res["rows"].append(row(f"log-prob err, autocast, {name}, |logit| <= {logit:.3g}: max/mean",
                                   f"{point['max_err']:.2g}/{point['mean_err']:.2g}"))
    return res


def bench_toy(args, device, hw):
    """Enumerate every response of the toy MDP and evaluate a table and the tiny GPT on all of
    them exactly (toy.metrics.summary), as the letters and the horizon grow. On CPU. The tiny GPT
    twice: once per prefix (mdp.trajectory_logprobs, the prefix tree through the KV cache) and
    once per response (mdp.trajectory_logprobs_by_trajectory, the reference), with the largest
    difference of log d(y|x) between the two."""
    from toy import metrics
    from toy.gpt import tiny_gpt
    from toy.mdp import ToyConfig, ToyMDP
    from toy.tabular import TabularPolicy
    res, threads = {"grid": [], "rows": []}, torch.get_num_threads()
    torch.set_num_threads(1)  # as toy scripts run (toy/task.py): more threads only slow tiny tensors
    for L, T in args.toy_grid:
        s, mdp = clock(lambda: ToyMDP(ToyConfig(n_letters=L, horizon=T, n_modes=min(3, L))), device)
        point = {"letters": L, "horizon": T, "trajectories": mdp.n_prompts * len(mdp.responses),
                 "enumerate_s": s}
        gpt, logd = tiny_gpt(mdp), {}
        for name, policy, logprobs in (("table", TabularPolicy(mdp), mdp.trajectory_logprobs),
                                       ("gpt", gpt, mdp.trajectory_logprobs),
                                       ("gpt_by_trajectory", gpt, mdp.trajectory_logprobs_by_trajectory)):
            def evaluate():
                logd[name] = logprobs(policy)
                return metrics.summary(mdp, logd[name])
            with torch.no_grad():
                point[f"eval_{name}_s"] = clock(evaluate, device)[0]
        point["gpt_tree_max_err"] = (logd["gpt"] - logd["gpt_by_trajectory"]).abs().max().item()
        res["grid"].append(point)
        keys = ("enumerate_s", "eval_table_s", "eval_gpt_s", "eval_gpt_by_trajectory_s")
        res["rows"].append(row(f"toy {L}x{T}, {point['trajectories']} traj.: enum/table/gpt/by traj. s",
                               "/".join(f"{point[k]:.2g}" for k in keys),
                               ratio=point["eval_gpt_by_trajectory_s"] / point["eval_gpt_s"],
                               target="gpt = by traj. to 1e-12", met=point["gpt_tree_max_err"] <= 1e-12))
    torch.set_num_threads(threads)
    return res


# -----------------------------------------------------------------------------------------------
# the table and the command line


def fmt(v):
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def print_table(rows):
    print(f"{'metric':<52} {'ours':>15} {'transformers':>12} {'ratio':>7}  {'target':<20} met")
    for r in rows:
        print(f"{r['metric']:<52} {fmt(r['ours']):>15} {fmt(r['transformers']):>12} {fmt(r['ratio']):>7}  "
              f"{r['target']:<20} {({None: '-', True: 'met', False: 'MISSED'})[r['met']]}")


SECTIONS = {"train": bench_train, "sample": bench_sample, "ppo": bench_ppo, "memory": bench_memory,
            "numerics": bench_numerics, "toy": bench_toy}
def grid(s):
    """argparse type of --ppo-grid / --toy-grid: "AxB,CxD" of positive integers."""
    try:
        points = [tuple(positive_int(v) for v in g.split("x")) for g in s.split(",")]
    except argparse.ArgumentTypeError:
        points = []
    if not points or any(len(p) != 2 for p in points):
        raise argparse.ArgumentTypeError(f"expected AxB,CxD,... of positive integers, got {s!r}")
    return points
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--config", default="pythia-1b", choices=list(CONFIGS), help="random-init model size")
parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of the default")
parser.add_argument("--device", default="cuda", help="cuda or cpu (the toy section always runs on CPU)")
parser.add_argument("--json", default=None, help="write every number to this JSON file")
g = parser.add_argument_group("shapes and repeats (defaults: SIZES; CUDA's in brackets)")
g.add_argument("--batch", type=positive_int, help="training-step batch; PPO micro-batch [8]")
g.add_argument("--sample-batch", type=positive_int, help="prompts per sampling call [64]")
g.add_argument("--prompt-len", type=positive_int, help="prompt tokens, left-padded [512]")
g.add_argument("--response-len", type=positive_int, help="new tokens per response [53]")
g.add_argument("--ppo-grid", type=grid, help="PPO rollout batch x response length [16x53,32x53,64x53,64x106]")
g.add_argument("--toy-grid", type=grid, help="toy letters x horizon [3x5,4x6,5x6]")
g.add_argument("--grad-checkpoint", action="store_true", help="activation checkpointing (train, ppo)")
g.add_argument("--warmup", type=nonnegative_int, help="untimed runs before each measurement [2]")
g.add_argument("--repeats", type=positive_int, help="timed runs, the median reported; PPO does half [5]")


def main(args, hw=None):
    """Every section of args.sections; hw: this device's ceilings() when already measured."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: use --device cpu")
    for k, v in SIZES[device.type].items():
        if getattr(args, k) is None:
            setattr(args, k, grid(v) if k.endswith("grid") else v)
    hw = hw or ceilings(device, args)
    numerics = ("fp32 master weights, bf16 autocast forward, fp32 loss and log-softmax, fused AdamW; ours "
                "and transformers' alike" if device.type == "cuda" else "fp32 throughout (CPU), fused AdamW")
    try:
        import transformers
    except ImportError:
        transformers = None
    out = {"config": args.config, "args": vars(args), "hardware": hw, "numerics": numerics,
           "torch": torch.__version__, "transformers": transformers and transformers.__version__,
           "formulas": {"train_flops_per_token": "6 N + 12 L d T, N = parameters except embed_in",
                        "sampling_floor": "prefill FLOPs / rate + sum_t max(bytes_t / bandwidth, FLOPs_t / rate)"}}
    print(f"{args.config} on {hw['device']}: {numerics}\nmeasured here: matmul "
          f"{hw['matmul_flops_per_s'] / 1e12:.4g} TFLOP/s ({hw['compute_dtype']}), copy "
          f"{hw['copy_bytes_per_s'] / 1e9:.4g} GB/s (read + write)", flush=True)
    out["table"] = []
    for name in args.sections.split(","):
        out[name] = SECTIONS[name](args, torch.device("cpu") if name in ("memory", "toy") else device, hw)
        out["table"] += out[name]["rows"]
        torch.cuda.empty_cache()
    print_table(out["table"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main(parser.parse_args())
