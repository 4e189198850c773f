"""
Tests of nanoirl/model.py and nanoirl/hub.py: parity with Hugging Face's GPTNeoXForCausalLM
(an independent reference, skipped when transformers is absent), KV-cache decoding against a full
forward pass, left-padding invariance, sampling rules, and checkpoint errors. CPU, a few seconds.
"""
import json
import math

import pytest
import torch

from nanoirl import hub
from nanoirl.checkpoint import load_model, read_safetensors, save_model
from nanoirl.model import CONFIGS, GPT, GPTConfig, ScalarGPT, filter_top_k_top_p
from nanoirl.policy import NEG_INF, left_pad, pad_after_eos, response_mask

try:
    import transformers
except ImportError:
    transformers = None
needs_hf = pytest.mark.skipif(transformers is None, reason="transformers (the reference) not installed")

V = 97  # a vocabulary size that is no power of two


@pytest.fixture(scope="module")
def hf_model():
    """A small random GPT-NeoX with every parameter (LayerNorms, biases too) perturbed away from
    its init, so that a wrong bias, LN or head mapping cannot hide behind zeros and ones."""
    if transformers is None:
        pytest.skip("transformers (the reference) not installed")
    cfg = transformers.GPTNeoXConfig(
        vocab_size=V, hidden_size=64, num_attention_heads=4, num_hidden_layers=3, intermediate_size=256,
        rotary_pct=0.25, rotary_emb_base=10000, max_position_embeddings=64, use_parallel_residual=True,
        bos_token_id=0, eos_token_id=0, tie_word_embeddings=False, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def hf_dirs(hf_model, tmp_path_factory):
    """The HF model saved as safetensors, as pytorch_model.bin, and as sharded safetensors."""
    dirs = {name: tmp_path_factory.mktemp(name) for name in ["safetensors", "bin", "sharded"]}
    hf_model.save_pretrained(dirs["safetensors"])
    hf_model.save_pretrained(dirs["sharded"], max_shard_size="100KB")
    # transformers 5 no longer writes .bin files: write one like the Hub's old Pythia files, with
    # the head under embed_out and the stale buffers that old GPT-NeoX code kept in its state dict
    hf_model.config.save_pretrained(dirs["bin"])
    state = {k.replace("lm_head.", "embed_out."): v for k, v in hf_model.state_dict().items()}
    for i in range(hf_model.config.num_hidden_layers):
        state[f"gpt_neox.layers.{i}.attention.bias"] = torch.ones(1, 1, 64, 64, dtype=torch.bool).tril()
        state[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
        state[f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq"] = torch.ones(2)
    torch.save(state, dirs["bin"] / "pytorch_model.bin")
    return dirs


def tiny(dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = GPTConfig(**{**CONFIGS["tiny"].__dict__, **kw})
    return GPT(cfg).to(dtype).eval()


def batch(seqs, pad_id=1):
    return left_pad(seqs, pad_id)


def alone(seq):
    """One unpadded prompt as a batch of one."""
    return torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.bool)


# ---------------------------------------------------------------------------------------------
# parity with transformers


@needs_hf
@pytest.mark.parametrize("fmt", ["safetensors", "bin", "sharded"])
def test_logits_match_hf(hf_model, hf_dirs, fmt):
    if fmt == "bin":
        assert (hf_dirs[fmt] / "pytorch_model.bin").is_file()
    if fmt == "sharded":
        assert (hf_dirs[fmt] / "model.safetensors.index.json").is_file()
    model = load_model(GPT, hf_dirs[fmt]).eval()
    assert model.config.n_embd == 64 and model.config.rotary_pct == 0.25 and model.config.vocab_size == V
    idx = torch.randint(0, V, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, ours = hf_model(idx).logits, model(idx)
    assert ours.shape == (3, 40, V)
    assert (ref - ours).abs().max() < 1e-4


@needs_hf
def test_left_padded_logits_match_hf(hf_model, hf_dirs):
    """With left padding and HF given the same attention mask, real positions agree; positions
    that are all padding come out finite (HF and we differ there, and nobody reads them)."""
    model = load_model(GPT, hf_dirs["safetensors"]).eval()
    idx = torch.randint(2, V, (3, 30), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(3, 30, dtype=torch.bool)
    mask[0, :7] = False
    mask[1, :29] = False  # a single real token
    with torch.no_grad():
        ref, ours = hf_model(idx, attention_mask=mask.long()).logits, model(idx, mask)
    assert torch.isfinite(ours).all()
    assert (ref - ours)[mask].abs().max() < 1e-4


@needs_hf
def test_save_pretrained_loads_in_hf(hf_model, hf_dirs, tmp_path):
    model = load_model(GPT, hf_dirs["safetensors"]).eval()
    save_model(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no temp files
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt_neox" and config["architectures"] == ["GPTNeoXForCausalLM"]
    back = transformers.GPTNeoXForCausalLM.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, V, (2, 33), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (back(idx).logits - hf_model(idx).logits).abs().max() < 1e-5
    # every tensor is bit-identical after our write and our read
    theirs = {k.replace("lm_head.", "embed_out."): v for k, v in hf_model.state_dict().items()}
    ours = read_safetensors(tmp_path / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        assert torch.equal(value, theirs[key]), key


@needs_hf
def test_greedy_sample_matches_hf_generate(hf_model, hf_dirs):
    model = load_model(GPT, hf_dirs["safetensors"]).eval()
    prompts, mask = batch([[5, 17, 33, 2, 9, 40], [7, 8, 9], [60, 61, 62, 63, 64]])  # left-padded
    eos, pad = 96, 1  # row 0 ends with EOS at step 9, the others run to the end: both cases covered
    ours, _ = model.sample(prompts, mask, max_new_tokens=20, eos_id=eos, pad_id=pad, temperature=0)
    assert (ours[0, 8:] == torch.tensor([eos] + [pad] * 11)).all() and (ours[1:] != pad).all()
    ref = hf_model.generate(prompts, attention_mask=mask.long(), max_new_tokens=20, do_sample=False,
                            eos_token_id=eos, pad_token_id=pad)[:, prompts.shape[1]:]
    ref = torch.nn.functional.pad(ref, (0, 20 - ref.shape[1]), value=pad)  # HF stops early too
    assert torch.equal(ours, ref)


# ---------------------------------------------------------------------------------------------
# the policy interface


def test_kv_cache_sampling_logprobs_equal_full_forward():
    """The log-probs `sample` reports during KV-cache decoding equal logprobs() recomputed by one
    full forward pass on the result, for left-padded prompts and a temperature != 1."""
    model = tiny()
    prompts, mask = batch([[3, 4, 5], [6], [7, 8, 9, 10, 11]])
    g = torch.Generator().manual_seed(0)
    for kw in [{}, {"top_k": 5}, {"top_p": 0.8}, {"min_new_tokens": 4}]:
        y, lp = model.sample(prompts, mask, 12, eos_id=2, pad_id=1, temperature=0.7, generator=g, **kw)
        full = model.logprobs(prompts, mask, y, temperature=0.7)
        valid = response_mask(y, 2)
        assert (lp - full)[valid].abs().max() < 1e-5, kw
        assert torch.isfinite(full).all()


def test_left_padding_does_not_change_logprobs():
    model = tiny()
    seqs = [[3, 4, 5, 6], [7], [8, 9, 10, 11, 12, 13, 14]]
    responses = torch.tensor([[20, 21, 22, 2, 1], [23, 24, 25, 26, 27], [2, 1, 1, 1, 1]])
    prompts, mask = batch(seqs)
    together = model.logprobs(prompts, mask, responses, temperature=0.9)
    for i, s in enumerate(seqs):
        single = model.logprobs(*alone(s), responses[i:i + 1], temperature=0.9)
        assert (together[i] - single[0]).abs().max() < 1e-10


def test_state_scores_left_padding_and_layout():
    torch.manual_seed(0)
    scorer = ScalarGPT(CONFIGS["tiny"]).double().eval()
    seqs = [[3, 4, 5], [6, 7, 8, 9, 10, 11]]
    responses = torch.tensor([[20, 2, 1], [21, 22, 23]])
    prompts, mask = batch(seqs)
    together = scorer.state_scores(prompts, mask, responses)
    assert together.shape == (2, 4)
    for i, s in enumerate(seqs):
        single = scorer.state_scores(*alone(s), responses[i:i + 1])
        assert (together[i] - single[0]).abs().max() < 1e-10
        # s_t's score is read at its last token: out[:, t] is the forward score at that position
        full = scorer(torch.tensor([s + responses[i].tolist()]))[0]
        assert (single[0] - full[len(s) - 1:]).abs().max() < 1e-12


def test_score_head_init_and_load_model(tmp_path):
    cfg = GPTConfig(vocab_size=50, block_size=32, n_layer=1, n_head=4, n_embd=1024)
    torch.manual_seed(0)
    scorer = ScalarGPT(cfg)
    std = 1 / math.sqrt(1024 + 1)  # N(0, 1/sqrt(d+1)) as in the TL;DR PPO code
    assert abs(scorer.score.weight.std().item() / std - 1) < 0.1 and (scorer.score.bias == 0).all()
    assert abs(scorer.gpt_neox.embed_in.weight.std().item() / 0.02 - 1) < 0.05
    # from a causal LM: the same backbone, a fresh head
    lm = tiny(torch.float32)
    save_model(lm, tmp_path / "lm")
    rm = load_model(ScalarGPT, tmp_path / "lm")
    for key, value in lm.gpt_neox.state_dict().items():
        assert torch.equal(rm.gpt_neox.state_dict()[key], value), key
    assert rm.score.bias.item() == 0 and rm.score.weight.abs().max() > 0
    # a saved ScalarGPT keeps its head
    with torch.no_grad():
        rm.score.bias.fill_(0.5)
    save_model(rm, tmp_path / "rm")
    again = load_model(ScalarGPT, tmp_path / "rm")
    idx = torch.randint(0, 64, (2, 9))
    assert torch.equal(again(idx), rm(idx))


def test_min_new_tokens_and_pad_after_eos():
    model = tiny()
    eos, pad = 2, 1
    model.set_allowed_tokens([eos, 10, 11])  # EOS has a good chance at every step
    prompts, mask = batch([[3, 4]] * 64)
    g = torch.Generator().manual_seed(0)
    free, _ = model.sample(prompts, mask, 10, eos, pad, generator=g)
    assert (free[:, :4] == eos).any()  # without the ban EOS does come early: the test can fail
    y, lp = model.sample(prompts, mask, 10, eos, pad, min_new_tokens=4, generator=g)
    assert not (y[:, :4] == eos).any() and (y == eos).any()
    assert torch.equal(y, pad_after_eos(y, eos, pad))  # after the first EOS only pad
    assert ((y == pad) == ~response_mask(y, eos)).all()  # and pad nowhere else
    assert torch.isfinite(lp).all()


def test_sampling_stops_once_every_row_has_ended():
    model = tiny()
    calls = []
    model.gpt_neox.register_forward_hook(lambda *args: calls.append(1))
    model.set_allowed_tokens([2])  # EOS is the only choice: every row ends at the first token
    y, _ = model.sample(*batch([[3, 4], [5]]), 50, eos_id=2, pad_id=1)
    assert y[:, 0].tolist() == [2, 2] and (y[:, 1:] == 1).all()
    assert len(calls) == 1  # the prefill only, not 50 decoding steps


def test_top_k_1_is_greedy_and_greedy_is_argmax():
    model = tiny()
    prompts, mask = batch([[3, 4, 5], [9]])
    greedy, lp = model.sample(prompts, mask, 8, eos_id=2, pad_id=1, temperature=0)
    top1, _ = model.sample(prompts, mask, 8, eos_id=2, pad_id=1, top_k=1,
                           generator=torch.Generator().manual_seed(5))
    assert torch.equal(greedy, top1)
    # greedy picks the argmax of the full-forward distribution at every step
    full = model(torch.cat([prompts, greedy], 1), torch.cat([mask, greedy >= 0], 1))  # (B, P+R, V)
    valid = response_mask(greedy, 2)
    assert torch.equal(full[:, prompts.shape[1] - 1:-1].argmax(-1)[valid], greedy[valid])


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda **kw: torch.isfinite(filter_top_k_top_p(logits, **kw))[0].tolist()
    assert kept(top_p=0.7) == [True, True, False, False]  # 0.5 < 0.7 <= 0.5 + 0.3
    assert kept(top_p=0.45) == [True, False, False, False]
    assert kept(top_p=0.01) == [True, False, False, False]  # the top token always survives
    assert kept(top_k=3, top_p=0.99) == [True, True, True, False]
    if transformers is not None:  # the same sets as HF's warpers on random logits
        from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper
        x = torch.randn(50, 30, generator=torch.Generator().manual_seed(0)) * 2
        ref = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(10)(None, x.clone()))
        ours = filter_top_k_top_p(x, top_k=10, top_p=0.8)
        assert torch.equal(torch.isfinite(ours), torch.isfinite(ref))


def test_allowed_tokens():
    model = tiny()
    allowed = [2, 5, 6, 40]
    model.set_allowed_tokens(allowed)
    prompts, mask = batch([[3, 4], [7]] * 16)
    y, lp = model.sample(prompts, mask, 6, eos_id=2, pad_id=1, generator=torch.Generator().manual_seed(0))
    assert set(y[response_mask(y, 2)].tolist()) <= set(allowed)
    logits = model(prompts)
    outside = torch.ones(64, dtype=torch.bool)
    outside[allowed] = False
    assert (logits[..., outside] == NEG_INF).all() and torch.isfinite(logits).all()
    # the support is the allowed set: its probabilities sum to one
    every = torch.tensor(allowed).repeat(32, 1)  # a response position per allowed token
    logp = torch.stack([model.logprobs(prompts, mask, every[:, i:i + 1]) for i in range(4)], -1)
    assert (logp.exp().sum(-1) - 1).abs().max() < 1e-12
    model.set_allowed_tokens(None)
    assert torch.isfinite(model(prompts)).all() and (model(prompts)[..., outside] > NEG_INF).all()


def test_fully_padded_rows_and_gradient_checkpointing():
    model = tiny(torch.float32).train()
    idx = torch.randint(0, 64, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1] = False  # a row that is all padding
    assert torch.isfinite(model(idx, mask)).all()
    calls, layer = [], model.gpt_neox.layers[0]
    forward = layer.forward  # count its runs (module hooks do not fire during the recomputation)
    layer.forward = lambda *args: calls.append(1) or forward(*args)
    model(idx, mask)[0].logsumexp(-1).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    model(idx, mask)[0].logsumexp(-1).sum().backward()
    assert len(calls) == 1 + 2  # with checkpointing the layer runs again during backward
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6)


def test_pythia_configs_have_the_published_parameter_counts():
    """Total parameters from the Pythia paper (Table 1): a wrong width, depth or vocab shows."""
    published = {"pythia-70m": 70_426_624, "pythia-160m": 162_322_944, "pythia-410m": 405_334_016,
                 "pythia-1b": 1_011_781_632, "pythia-1.4b": 1_414_647_808, "pythia-2.8b": 2_775_208_960,
                 "pythia-6.9b": 6_857_302_016, "pythia-12b": 11_846_072_320}
    for name, count in published.items():
        with torch.device("meta"):
            model = GPT(CONFIGS[name])
        assert sum(p.numel() for p in model.parameters()) == count, name


def test_random_name():
    model = load_model(GPT, "random:tiny", dtype=torch.float64)
    assert model.embed_out.weight.dtype == torch.float64 and model.config == CONFIGS["tiny"]
    with pytest.raises(ValueError, match="no-such-config"):
        load_model(GPT, "random:no-such-config")


# ---------------------------------------------------------------------------------------------
# checkpoint files and where they come from


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


def test_unknown_name_and_uncached_model(offline_empty_cache):
    with pytest.raises(ValueError, match="pythia-9000m") as e:
        load_model(GPT, "pythia-9000m")
    assert "pythia-1b" in str(e.value)  # lists the known names
    with pytest.raises(FileNotFoundError) as e:
        load_model(GPT, "pythia-70m")
    message = str(e.value)
    assert "EleutherAI/pythia-70m" in message and str(offline_empty_cache) in message
    assert "HF_HUB_OFFLINE" in message and "huggingface-cli download EleutherAI/pythia-70m" in message


def test_hf_cache_layout_is_found_by_name(offline_empty_cache, tmp_path):
    model = tiny(torch.float32)
    repo = offline_empty_cache / "models--EleutherAI--pythia-70m"
    save_model(model, repo / "snapshots" / "abc")
    save_model(tiny(torch.float32, seed=1), repo / "snapshots" / "old")  # another revision
    (repo / "snapshots" / "abc" / "tokenizer.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    assert hub.resolve("pythia-70m", ["tokenizer.json"]) == repo / "snapshots" / "abc"
    assert hub.resolve("EleutherAI/pythia-70m", ["config.json"]) == repo / "snapshots" / "abc"
    (repo / "refs" / "v1").write_text("old")  # a branch names its own snapshot, not main's
    assert hub.resolve("pythia-70m@v1", ["config.json"]) == repo / "snapshots" / "old"
    assert hub.resolve("pythia-70m@old", ["config.json"]) == repo / "snapshots" / "old"  # a commit
    with pytest.raises(FileNotFoundError, match="--revision v2"):
        hub.resolve("pythia-70m@v2", ["config.json"])
    loaded = load_model(GPT, "pythia-70m")
    idx = torch.randint(0, 64, (1, 7))
    assert torch.equal(loaded(idx), model(idx))


def test_download_fetches_only_the_needed_files(tmp_path, monkeypatch):
    """Not cached and not offline: hub asks huggingface_hub (here a fake) for just config.json and
    model.safetensors, not the .bin twin that the Hub's Pythia repos also hold."""
    import sys
    import types
    model = tiny(torch.float32)
    save_model(model, tmp_path / "remote")
    fetched = []

    def hf_hub_download(repo, filename, revision="main"):
        fetched.append((repo, filename) if revision == "main" else (repo, filename, revision))
        if not (tmp_path / "remote" / filename).is_file():
            raise FileNotFoundError(filename)  # what huggingface_hub's EntryNotFoundError is to us
        return str(tmp_path / "remote" / filename)
    fake = types.SimpleNamespace(hf_hub_download=hf_hub_download)
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    monkeypatch.setattr(hub, "reachable", lambda: None)  # the fake Hub answers
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    idx = torch.randint(0, 64, (1, 5))
    assert torch.equal(load_model(GPT, "pythia-410m-deduped")(idx), model(idx))
    repo = "EleutherAI/pythia-410m-deduped"
    assert fetched == [(repo, "config.json"), (repo, "model.safetensors")]
    # a branch of a Hub repo: owner/name@revision (the TL;DR reference models keep weights there)
    fetched.clear()
    load_model(GPT, "vwxyzjn/EleutherAI_pythia-1b-deduped__sft__tldr@sft__55513__1706646024")
    repo, rev = "vwxyzjn/EleutherAI_pythia-1b-deduped__sft__tldr", "sft__55513__1706646024"
    assert fetched == [(repo, "config.json", rev), (repo, "model.safetensors", rev)]


def test_truncated_safetensors(tmp_path):
    save_model(tiny(torch.float32), tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="model.safetensors.*truncated"):
        load_model(GPT, tmp_path)
    path.write_bytes(b"\x05")
    with pytest.raises(ValueError, match="model.safetensors"):
        load_model(GPT, tmp_path)


def test_misshaped_and_missing_tensors(tmp_path):
    model, key = tiny(torch.float32), "gpt_neox.layers.1.mlp.dense_h_to_4h.weight"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state[key] = torch.zeros(3, 3)
    state["gpt_neox.layers.0.attention.bias"] = torch.ones(1, 1, 4, 4, dtype=torch.bool)  # stale buffer
    save_model(model, tmp_path)
    (tmp_path / "model.safetensors").unlink()  # now pytorch_model.bin is the one read
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model.bin.*layers\.1\.mlp\.dense_h_to_4h\.weight.*shape"):
        load_model(GPT, tmp_path)
    del state[key]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"no tensor gpt_neox\.layers\.1\.mlp\.dense_h_to_4h\.weight"):
        load_model(GPT, tmp_path)
    state[key] = model.state_dict()[key]  # complete again: loads, the stale buffer ignored
    torch.save(state, tmp_path / "pytorch_model.bin")
    idx = torch.tensor([[1, 2, 3]])
    assert torch.equal(load_model(GPT, tmp_path)(idx), model(idx))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        load_model(GPT, tmp_path)
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(GPT, tmp_path)


def test_safetensors_reader_dtypes(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors not installed")
    tensors = {"f16": torch.randn(3, 4).half(), "bf16": torch.randn(5).bfloat16(),
               "f32": torch.randn(2, 2, 2), "f64": torch.randn(7).double(), "i64": torch.arange(-3, 9),
               "empty": torch.zeros(0, 3)}
    safetensors_torch.save_file(tensors, tmp_path / "x.safetensors")
    read = read_safetensors(tmp_path / "x.safetensors")
    for key, value in tensors.items():
        assert read[key].dtype == value.dtype and torch.equal(read[key], value), key


def safetensors_file(path, header, data=b"", n=None):
    """A .safetensors file of a given header (any JSON) and data bytes; n overrides its length."""
    blob = json.dumps(header).encode()
    path.write_bytes((len(blob) if n is None else n).to_bytes(8, "little") + blob + data)
    return path


F32 = lambda begin, end, shape=(2,): {"dtype": "F32", "shape": list(shape), "data_offsets": [begin, end]}
BAD_HEADERS = [  # (header, data, n or None, the end of the message)
    ({"a": F32(0, 8), "b": F32(0, 8)}, bytes(8), None, "tensor b: data_offsets [0, 8] overlaps tensor a (a damaged header)"),
    ({"a": F32(0, 8), "b": F32(4, 12)}, bytes(12), None, "tensor b: data_offsets [4, 12] overlaps tensor a (a damaged header)"),
    ({"a": F32(-8, 0)}, b"", None, "tensor a: data_offsets [-8, 0] is not [begin, end] with 0 <= begin <= end"),
    ({"a": F32(8, 0)}, bytes(8), None, "tensor a: data_offsets [8, 0] is not [begin, end] with 0 <= begin <= end"),
    ({"a": F32(0, 8)}, bytes(8), 2 ** 62, "not a safetensors file, or truncated (its header length 4611686018427387904 "
                                         "exceeds the file's 77 bytes)"),
    ({"a": F32(0, 8)}, bytes(8), 2 ** 64 - 1, "not a safetensors file, or truncated (its header length "
                                             "18446744073709551615 exceeds the file's 77 bytes)"),
    ([1, 2], b"", None, "not a safetensors file (its header is an array, not a JSON object)"),
    ({"a": "F32"}, b"", None, 'tensor a: expected {dtype, shape, data_offsets}, got "F32"'),
    ({"a": {"dtype": "F32", "shape": [2]}}, bytes(8), None, "tensor a: expected {dtype, shape, data_offsets}, got "
                                                          '{"dtype": "F32", "shape": [2]}'),
    ({"a": {**F32(0, 8), "data_offsets": [0, 4, 8]}}, bytes(8), None,
     "tensor a: data_offsets [0, 4, 8] is not [begin, end] with 0 <= begin <= end"),
    ({"a": {**F32(0, 8), "dtype": "F8"}}, bytes(8), None, "tensor a: unknown dtype 'F8'; known: F16, BF16, F32, F64, "
                                                          "I64, I32, I16, I8, U8, BOOL"),
    ({"a": F32(0, 8, shape=(3,))}, bytes(8), None, "tensor a: data_offsets [0, 8] hold 8 bytes, but shape [3] of F32 takes 12"),
    ({"a": F32(0, 8, shape=("2",))}, bytes(8), None, 'tensor a: shape ["2"] is not a list of integers >= 0'),
    ({"a": F32(8, 16)}, bytes(16), None, "tensor a: data_offsets [8, 16] leaves bytes 0-8 unused after the header "
                                        "(a damaged header)"),
    ({"a": F32(0, 8)}, bytes(12), None, "4 bytes after the last tensor's data (a damaged header)"),
    ({"a": F32(0, 8)}, bytes(4), None, "is truncated: tensor a ends at byte 77/73"),
]


@pytest.mark.parametrize("header,data,n,error", BAD_HEADERS, ids=range(len(BAD_HEADERS)))
def test_safetensors_header_is_checked(tmp_path, header, data, n, error):
    """A damaged header (aliased or shifted offsets, negative ones, a huge length, a list, a
    string entry, a missing or 3-item data_offsets...) is one line naming the file and tensor,
    as the reference reader refuses it, on the --gold-model path too (task.tensor_names)."""
    from nanoirl.task import tensor_names
    path = safetensors_file(tmp_path / "model.safetensors", header, data, n)
    for read in (read_safetensors, lambda p: tensor_names([p])):
        with pytest.raises(ValueError) as e:
            read(path)
        assert "\n" not in str(e.value) and str(e.value).startswith(str(path)), str(e.value)
        assert str(e.value).endswith(error), str(e.value)
    good = safetensors_file(tmp_path / "good.safetensors", {"__metadata__": {"format": "pt"}, "a": F32(0, 8),
                                                            "e": F32(8, 8, shape=(0, 3))}, bytes(8))
    assert tensor_names([good]) == {"a", "e"} and read_safetensors(good)["a"].tolist() == [0, 0]


def test_damaged_bin_gold_model_is_one_line_before_out(tmp_path, demos):
    """A --gold-model whose pytorch_model.bin is empty, cut short, not a checkpoint, or no dict of
    tensors: one line naming the file (task.tensor_names let torch.load's traceback through), and
    --out is never made. The whole file loads."""
    import io

    import train_sft
    from nanoirl.cli import RunError
    from nanoirl.task import load_gold_model
    from test_scripts import tiny_text_run
    gold, out = tmp_path / "gold", tmp_path / "run"
    save_model(ScalarGPT(GPTConfig(vocab_size=245, block_size=96, n_layer=1, n_head=2, n_embd=16)), gold)
    state = load_model(ScalarGPT, gold).state_dict()
    (gold / "model.safetensors").unlink()
    whole, listed = io.BytesIO(), io.BytesIO()
    torch.save(state, whole)
    torch.save([1, 2], listed)
    bin_ = gold / "pytorch_model.bin"
    for content, what in [(b"", "it is empty (0 bytes)"),
                          (whole.getvalue()[:5000], "it is damaged or not a PyTorch checkpoint (5000 bytes)"),
                          (b"not a checkpoint\n" * 10, "it is damaged or not a PyTorch checkpoint (170 bytes)"),
                          (listed.getvalue(), "it holds list, not a dict of tensors")]:
        bin_.write_bytes(content)
        with pytest.raises(RunError) as e:
            load_gold_model(str(gold), "cpu")
        assert str(e.value) == f"--gold-model {gold}: {bin_}: cannot read the weights: {what}"
    flags = [*tiny_text_run(tmp_path, demos), "--gold-model", gold, "--out", out]
    with pytest.raises(RunError, match=f"^--gold-model {gold}: {bin_}: cannot read the weights: it holds list"):
        train_sft.main(train_sft.parser.parse_args(list(map(str, flags))))
    assert not out.exists()
    bin_.write_bytes(whole.getvalue())
    assert load_gold_model(str(gold), "cpu").score.weight.shape == (1, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_sampling_agrees_with_float32():
    torch.manual_seed(0)
    cfg = CONFIGS["small"]
    model = GPT(cfg).cuda().eval()
    prompts, mask = batch([[3, 4, 5, 6], [7, 8]])
    prompts, mask = prompts.cuda(), mask.cuda()
    y, lp = model.bfloat16().sample(prompts, mask, 16, eos_id=0, pad_id=1, temperature=0.7,
                                    generator=torch.Generator("cuda").manual_seed(0))
    assert torch.isfinite(lp).all() and lp.dtype == torch.float32
    ref = model.float().logprobs(prompts, mask, y, temperature=0.7)
    assert (lp - ref)[response_mask(y, 0)].abs().max() < 0.1  # bf16 keeps ~3 digits


# ---------------------------------------------------------------------------------------------
# the TL;DR reference code's reward models (ScalarModel)


def reference_scalar_model(directory, bias):
    """A reward model saved as the TL;DR reference code saves its ScalarModel, built with
    transformers: a GPTNeoXModel under lm_backbone., a Linear(d, 1) scalar_head, config.json
    with the GPT-NeoX config under base_config and the scalar bias. Returns (backbone, head)."""
    from safetensors.torch import save_file
    cfg = transformers.GPTNeoXConfig(
        vocab_size=V, hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64,
        max_position_embeddings=64, bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    torch.manual_seed(4)
    backbone, head = transformers.GPTNeoXModel(cfg).eval(), torch.nn.Linear(32, 1)
    with torch.no_grad():
        for p in [*backbone.parameters(), *head.parameters()]:
            p.add_(torch.randn_like(p) * 0.1)
    directory.mkdir(parents=True, exist_ok=True)
    state = {**{"lm_backbone." + k: v for k, v in backbone.state_dict().items()},
             **{"scalar_head." + k: v for k, v in head.state_dict().items()}}
    save_file({k: v.contiguous() for k, v in state.items()}, directory / "model.safetensors")
    config = {"architectures": ["ScalarModel"], "base_model": "EleutherAI/pythia-160m",
              "base_config": cfg.to_dict(), "hidden_size": 32, "bias": bias}
    (directory / "config.json").write_text(json.dumps(config))
    return backbone, head


@needs_hf
def test_reference_reward_model_scores_as_the_reference_code(tmp_path):
    """load_model(ScalarGPT, ...) on a ScalarModel directory: every score equals the reference
    computation scalar_head(hidden_states[-1]) - bias (fp32, left padding as in its get_reward),
    and the score read at the last response token (mlirl.sequence_rewards) too."""
    from nanoirl.mlirl import MLIRLConfig, sequence_rewards
    backbone, head = reference_scalar_model(tmp_path / "rm", bias=0.37)
    rm = load_model(ScalarGPT, tmp_path / "rm").eval()
    assert rm.score_offset == 0.37 and rm.config.n_embd == 32
    prompts, mask = batch([[5, 17, 33, 2, 9], [7, 8], [60, 61, 62]], pad_id=1)
    responses = torch.tensor([[10, 11, 0, 1], [12, 13, 14, 15], [0, 1, 1, 1]])  # EOS = 0, pad = 1
    idx = torch.cat([prompts, responses], 1)
    key_mask = torch.cat([mask, torch.ones_like(responses, dtype=torch.bool)], 1)
    with torch.no_grad():
        out = backbone(input_ids=idx.masked_fill(~key_mask, 0), attention_mask=key_mask.long(),
                       output_hidden_states=True)
        ref = head(out.hidden_states[-1]).squeeze(-1) - 0.37  # (B, T)
        ours = rm(idx, key_mask)
        assert (ours - ref)[key_mask].abs().max() < 1e-4
        last = torch.tensor([5 + 2, 5 + 3, 5 + 0])  # the EOS, or the last token when there is none
        r = sequence_rewards(rm, prompts, mask, responses, MLIRLConfig(eos_id=0, pad_id=1))
        assert (r - ref[torch.arange(3), last]).abs().max() < 1e-4
    # saved by us and read again: the same scores, the offset kept
    save_model(rm, tmp_path / "ours")
    again = load_model(ScalarGPT, tmp_path / "ours")
    assert again.score_offset == 0.37 and torch.equal(again(idx, key_mask), rm(idx, key_mask))


# ---------------------------------------------------------------------------------------------
# model directories: config.json and the weights checked before --out is made

@pytest.fixture
def demos(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"a{i}", "response": " b"}) + "\n" for i in range(4)))
    return path


BAD_CONFIGS = [  # (change to a valid config.json: a function of the dict, the end of the message)
    (lambda c: [c], "expected a JSON object of GPT-NeoX settings, got an array"),
    (lambda c: "gpt_neox", "expected a JSON object of GPT-NeoX settings, got a string"),
    (lambda c: None, "expected a JSON object of GPT-NeoX settings, got null"),
    (lambda c: {**c, "hidden_size": "16"}, 'hidden_size is "16", expected an integer > 0'),
    (lambda c: {**c, "vocab_size": 256.0}, "vocab_size is 256.0, expected an integer > 0"),
    (lambda c: {**c, "rotary_pct": "x"}, 'rotary_pct is "x", expected a number in [0, 1]'),
    (lambda c: {**c, "num_attention_heads": 3}, "num_attention_heads 3 does not divide hidden_size 16"),
    (lambda c: {**c, "num_attention_heads": 0}, "num_attention_heads is 0, expected an integer > 0"),
    (lambda c: {**c, "num_attention_heads": -2}, "num_attention_heads is -2, expected an integer > 0"),
    (lambda c: {k: v for k, v in c.items() if k != "intermediate_size"}, "missing 'intermediate_size'"),
    (lambda c: {**c, "bias": "x"}, 'bias is "x", expected a finite number'),
    (lambda c: {**c, "num_hidden_layers": 1}, "model.safetensors in {dir}: 12 tensors that the config.json's "
     "model does not have (gpt_neox.layers.1.attention.dense.bias, gpt_neox.layers.1.attention.dense.weight, "
     "gpt_neox.layers.1.attention.query_key_value.bias, ...): does config.json match the weights?"),
    (lambda c: {**c, "vocab_size": 200}, "model.safetensors in {dir}: tensor gpt_neox.embed_in.weight has shape "
     "[256, 16], expected [200, 16]"),
]


@pytest.mark.parametrize("change,error", BAD_CONFIGS, ids=range(len(BAD_CONFIGS)))
def test_bad_model_directory_is_one_line_before_out(tmp_path, demos, change, error):
    """A config.json that is not an object, a size that is not a positive integer, heads that do
    not divide the width, fewer layers than the weights: train_sft.py stops with one line naming
    the file and key, and --out is never made."""
    import train_sft
    from nanoirl.cli import RunError
    from test_scripts import tiny_text_run
    flags = tiny_text_run(tmp_path, demos)
    model = flags[1]
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(change(config)))
    out = tmp_path / "run"
    with pytest.raises(RunError) as e:
        train_sft.main(train_sft.parser.parse_args(list(map(str, [*flags, "--out", out]))))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"--model {model}: "), msg
    assert msg.endswith(error.format(dir=model)), msg
    assert not out.exists()


def test_vocab_below_the_tokenizers_is_refused_before_out(tmp_path, demos):
    """A model with fewer embedding rows than the tokenizer has ids would stop mid-run with an
    IndexError; it is refused at the start, for --model and --reward-init alike."""
    import train_sft
    from nanoirl.cli import RunError
    from test_scripts import tiny_text_run
    flags = tiny_text_run(tmp_path, demos)
    small = tmp_path / "small"
    save_model(GPT(GPTConfig(vocab_size=200, block_size=96, n_layer=2, n_head=2, n_embd=16)), small)
    (small / "tokenizer.json").write_bytes((flags[1] / "tokenizer.json").read_bytes())
    out = tmp_path / "run"
    for extra, error in [(["--model", small], f"--model {small}: vocab_size 200 is below the tokenizer's 245 tokens"),
                         (["--reward-init", small], f"--reward-init {small}: vocab_size 200 is below the tokenizer's 245")]:
        with pytest.raises(RunError) as e:
            train_sft.main(train_sft.parser.parse_args(list(map(str, [*flags, *extra, "--out", out]))))
        assert str(e.value).startswith(error), str(e.value)
        assert not out.exists()
