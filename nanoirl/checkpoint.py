"""
Checkpoint files of the models of nanoirl/model.py: Hugging Face's GPT-NeoX config.json and
weights in model.safetensors or pytorch_model.bin (sharded too), read and written here without
transformers or safetensors. Two layouts are read:
  GPTNeoXForCausalLM   gpt_neox.*, embed_out.* (or lm_head.*): Pythia, the TL;DR SFT and PPO policies
  ScalarModel          the TL;DR reference code's reward models: lm_backbone.* (a GPTNeoXModel),
                       scalar_head.{weight,bias}, the GPT-NeoX config under "base_config" in
                       config.json, and a scalar "bias" subtracted from every score
  load_model(cls, name_or_path)   a GPT or ScalarGPT from a name, a directory or "random:<config>"
  save_model(model, directory)    config.json + model.safetensors, as transformers saves them
"""
import json
import math
import os
import re
import struct
from pathlib import Path

import torch

from nanoirl import hub
from nanoirl.files import write_atomically
from nanoirl.model import CONFIGS, GPTConfig, ScalarGPT, new_score_head

SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
                      "F64": torch.float64, "I64": torch.int64, "I32": torch.int32,
                      "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def json_kind(value):
    """What a parsed JSON value is, in JSON's words: 'an array', 'a string', 'null', ..."""
    kinds = {list: "an array", str: "a string", type(None): "null", bool: "a boolean", dict: "an object"}
    return kinds.get(type(value), "a number")


def safetensors_header(path):
    """(header, data_start) of a .safetensors file: an 8-byte little-endian header length n, n
    bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}}, then the raw little-endian
    data. The header is checked as the reference reader checks it, before any tensor is read: a
    known dtype, end - begin = numel x dtype size, and the tensors, in offset order, tiling the data
    section exactly (no overlap, no gap, nothing before it or past the file's end); a bad file is a
    one-line ValueError naming it and the tensor."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if n is None or n > min(size - 8, 100_000_000):  # the reference reader's header limit: 100 MB
            what = "shorter than its 8-byte header length" if n is None else f"its header length {n} " \
                   f"exceeds the file's {size} bytes" if n > size - 8 else f"its header length {n} exceeds 100 MB"
            raise ValueError(f"{path}: not a safetensors file, or truncated ({what})")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a safetensors file, or truncated ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (its header is {json_kind(header)}, not a JSON object)")
    data_size, spans = size - 8 - n, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        bad = lambda why: ValueError(f"{path}: tensor {name}: {why}")
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise bad(f"expected {{dtype, shape, data_offsets}}, got {json.dumps(info)[:80]}")
        dtype, shape, offsets = SAFETENSORS_DTYPES.get(str(info["dtype"])), info["shape"], info["data_offsets"]
        is_int = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0
        if dtype is None:
            raise bad(f"unknown dtype {info['dtype']!r}; known: {', '.join(SAFETENSORS_DTYPES)}")
        if not (isinstance(shape, list) and all(map(is_int, shape))):
            raise bad(f"shape {json.dumps(shape)[:80]} is not a list of integers >= 0")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(is_int, offsets))
                and offsets[0] <= offsets[1]):
            raise bad(f"data_offsets {json.dumps(offsets)[:80]} is not [begin, end] with 0 <= begin <= end")
        if offsets[1] - offsets[0] != math.prod(shape) * dtype.itemsize:
            raise bad(f"data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes, but shape {shape} of "
                      f"{info['dtype']} takes {math.prod(shape) * dtype.itemsize}")
        spans.append((offsets[0], offsets[1], name))
    at, last = 0, None  # sorted by (begin, end): each tensor must start where the previous one ended
    for begin, end, name in sorted(spans):
        if begin != at:
            where = f"overlaps tensor {last}" if begin < at else f"leaves bytes {at}-{begin} unused after " \
                    f"{'tensor ' + last if last else 'the header'}"
            raise ValueError(f"{path}: tensor {name}: data_offsets [{begin}, {end}] {where} (a damaged header)")
        if end > data_size:
            raise ValueError(f"{path} is truncated: tensor {name} ends at byte {8 + n + end}/{size}")
        at, last = end, name
    if at != data_size:
        raise ValueError(f"{path}: {data_size - at} bytes after the last tensor's data (a damaged header)")
    return header, 8 + n


def read_safetensors(path):
    """{name: tensor} of a .safetensors file (its header checked first: safetensors_header)."""
    header, start = safetensors_header(path)
    out = {}
    with open(path, "rb") as f:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            (begin, end), dtype = info["data_offsets"], SAFETENSORS_DTYPES[info["dtype"]]
            f.seek(start + begin)
            data = bytearray(f.read(end - begin))  # a writable copy that the tensor owns
            out[name] = torch.frombuffer(data, dtype=dtype).reshape(info["shape"]) if data \
                else torch.empty(info["shape"], dtype=dtype)  # frombuffer refuses 0 bytes
    return out


def read_weights(path):
    """{name: tensor} of one .safetensors or .bin file; any failure is a ValueError naming it."""
    if str(path).endswith(".safetensors"):
        return read_safetensors(path)
    return read_bin(path)


def read_bin(path, mmap=False):
    """{name: tensor} of a pytorch_model.bin: torch.save's zip (with mmap, its tensors are read only
    when used) or an older pickle (read whole). A file that is empty, cut short, damaged, not a
    checkpoint or not a dict of tensors is a one-line ValueError naming it."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception:
            if not mmap:
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # an old pickle maps not
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        raise ValueError(f"{path}: cannot read it: {e.strerror}") from None
    except Exception:  # torch's message may advise weights_only=False: unsafe, so it is not shown
        size = os.path.getsize(path)
        what = "it is empty (0 bytes)" if size == 0 else f"it is damaged or not a PyTorch checkpoint ({size} bytes)"
        raise ValueError(f"{path}: cannot read the weights: {what}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: cannot read the weights: it holds {type(state).__name__}, not a dict of tensors")
    return state


# GPTConfig field -> Hugging Face config.json key
HF_NAMES = {"vocab_size": "vocab_size", "block_size": "max_position_embeddings",
            "n_layer": "num_hidden_layers", "n_head": "num_attention_heads", "n_embd": "hidden_size",
            "intermediate_size": "intermediate_size", "rotary_pct": "rotary_pct",
            "rotary_base": "rotary_emb_base", "layer_norm_eps": "layer_norm_eps"}


def config_from_hf(path):
    """GPTConfig from a Hugging Face GPT-NeoX config.json (old rotary_pct or new rope_parameters),
    or from the "base_config" of a ScalarModel's config.json. Every field is checked (a JSON object,
    integer sizes > 0, heads dividing hidden_size, rotary_pct in [0, 1]): a one-line ValueError
    naming the file and the key, before any model is built."""
    try:
        c = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a JSON file ({e})") from None
    c = c.get("base_config") or c if isinstance(c, dict) else c
    if not isinstance(c, dict):
        raise ValueError(f"{path}: expected a JSON object of GPT-NeoX settings, got {json_kind(c)}")
    rope = c.get("rope_parameters") or {}  # transformers >= 5 writes the rotary settings here
    rope = rope if isinstance(rope, dict) else {}
    c = {"rotary_pct": rope.get("partial_rotary_factor", 0.25), "rotary_emb_base": rope.get("rope_theta", 10000.0),
         "layer_norm_eps": 1e-5, **c}
    if (c.get("model_type"), c.get("use_parallel_residual", True), c.get("hidden_act", "gelu"),
            rope.get("rope_type", "default")) != ("gpt_neox", True, "gelu", "default"):
        raise ValueError(f"{path}: only GPT-NeoX with parallel residual, exact GELU and plain rotary")
    missing = [theirs for theirs in HF_NAMES.values() if theirs not in c]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(map(repr, missing))}")
    for ours, theirs in HF_NAMES.items():
        v, is_int = c[theirs], ours not in ("rotary_pct", "rotary_base", "layer_norm_eps")
        ok = isinstance(v, int) if is_int else isinstance(v, (int, float)) and math.isfinite(v)
        if isinstance(v, bool) or not ok or not (0 <= v <= 1 if ours == "rotary_pct" else v > 0):
            want = "an integer > 0" if is_int else "a number in [0, 1]" if ours == "rotary_pct" else "a number > 0"
            raise ValueError(f"{path}: {theirs} is {json.dumps(v)}, expected {want}")
    config = GPTConfig(**{ours: c[theirs] for ours, theirs in HF_NAMES.items()})
    if config.n_embd % config.n_head:
        raise ValueError(f"{path}: num_attention_heads {config.n_head} does not divide hidden_size {config.n_embd}")
    if int(config.n_embd // config.n_head * config.rotary_pct) % 2:
        raise ValueError(f"{path}: rotary_pct {config.rotary_pct} of the head size {config.n_embd // config.n_head} "
                         "is an odd number of dims (rotate-half needs pairs)")
    return config


# key prefixes of other layouts -> ours: HF >= 5 may save the head as lm_head; the reference
# ScalarModel holds a GPTNeoXModel (no gpt_neox. prefix of its own) as lm_backbone
RENAME = {"lm_head.": "embed_out.", "lm_backbone.": "gpt_neox.", "scalar_head.": "score."}


def load_model(cls, name_or_path, dtype=None, device=None):
    """A cls (GPT or ScalarGPT) from "random:<CONFIGS key>" for fresh random weights, else a directory or a
    model name (nanoirl.hub). dtype None means float32, whatever the checkpoint's dtype (Pythia's
    is fp16). A ScalarGPT loaded from a causal LM gets a freshly initialised head."""
    dtype = dtype or torch.float32
    if str(name_or_path).startswith("random:"):
        name = str(name_or_path)[len("random:"):]
        if name not in CONFIGS:
            raise ValueError(f"unknown config {name!r}; known: {', '.join(CONFIGS)}")
        with torch.device(device or "cpu"):  # initialise on the target device: faster on GPU
            return cls(CONFIGS[name]).to(dtype)
    files = hub.resolve_weights(name_or_path)
    config = config_from_hf(files[0].parent / "config.json")
    offset = json.loads((files[0].parent / "config.json").read_text()).get("bias", 0.0)
    if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset):
        raise ValueError(f"{files[0].parent / 'config.json'}: bias is {json.dumps(offset)}, expected a finite number")
    with torch.device("meta"):  # shapes only: no time or memory spent on a random init
        model = cls(config)
    expected = model.state_dict()
    found, where = {}, {}
    for f in files:
        for key, tensor in read_weights(f).items():
            key = our_key(key)
            found[key], where[key] = tensor, f.name
    if isinstance(model, ScalarGPT) and "score.weight" not in found:  # reward model from an LM
        head = new_score_head(config.n_embd)
        found.update({"score.weight": head.weight.data, "score.bias": head.bias.data})
    check_keys(model, {k: v.shape for k, v in found.items()}, where, files)
    model.load_state_dict({key: found[key] for key in expected}, assign=True)  # the meta parameters become the loaded tensors
    if isinstance(model, ScalarGPT):
        model.score_offset = float(offset)
    return model.to(device=device, dtype=dtype)


def our_key(key):
    for theirs, ours in RENAME.items():
        key = ours + key[len(theirs):] if key.startswith(theirs) else key
    return key


# tensors a checkpoint may hold that no model here takes: stale buffers of old GPT-NeoX code, and
# the LM head of a causal LM that a reward model (ScalarGPT) is initialised from
IGNORED = re.compile(r"gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)")


def check_keys(model, shapes, where, files):
    """Every tensor the (meta) model expects is in shapes {key: shape} with its shape, and no tensor
    is left over (a config.json with fewer layers than the weights would drop them silently)."""
    expected, at = model.state_dict(), f"{', '.join(f.name for f in files)} in {files[0].parent}"
    for key, meta in expected.items():
        if key not in shapes:
            raise ValueError(f"{at}: no tensor {key} (shape {list(meta.shape)})")
        if tuple(shapes[key]) != tuple(meta.shape):
            raise ValueError(f"{where.get(key, at)} in {files[0].parent}: tensor {key} has shape "
                             f"{list(shapes[key])}, expected {list(meta.shape)}")
    ignored = lambda k: IGNORED.fullmatch(k) or isinstance(model, ScalarGPT) and k == "embed_out.weight"
    extra = sorted(k for k in shapes.keys() - expected.keys() if not ignored(k))
    if extra:
        raise ValueError(f"{at}: {len(extra)} tensors that the config.json's model does not have "
                         f"({', '.join(extra[:3])}{', ...' * (len(extra) > 3)}): does config.json match the weights?")


def check_model(cls, name_or_path):
    """Check what load_model(cls, name_or_path) would load, without reading the tensors: config.json,
    and the names and shapes of the weights (safetensors headers; .bin files mapped). The models
    loaded after --out is made (--reward-init) are checked with it before."""
    if str(name_or_path).startswith("random:"):
        return load_model(cls, name_or_path, device="meta").config
    files = hub.resolve_weights(name_or_path)
    config = config_from_hf(files[0].parent / "config.json")
    with torch.device("meta"):
        model = cls(config)
    shapes, where = {}, {}
    for f in files:
        if f.suffix == ".safetensors":
            items = {k: v["shape"] for k, v in safetensors_header(f)[0].items() if k != "__metadata__"}
        else:
            items = {k: v.shape for k, v in read_bin(f, mmap=True).items()}
        for key, shape in items.items():
            shapes[our_key(key)], where[our_key(key)] = shape, f.name
    if isinstance(model, ScalarGPT) and "score.weight" not in shapes:
        shapes.update({"score.weight": (1, config.n_embd), "score.bias": (1,)})
    check_keys(model, shapes, where, files)
    return config


def save_model(model, directory):
    """config.json + model.safetensors in directory, loadable by HF's
    GPTNeoXForCausalLM.from_pretrained (for a GPT) and by load_model. Under torchrun every
    rank calls it (FSDP2's shards are gathered) and rank 0 writes the whole weights. Each file is
    written atomically; run.save_model_dir makes the whole directory one change."""
    from nanoirl import dist
    state = {k: v.detach().cpu().contiguous() for k, v in dist.state_dict(model).items()}
    dist.on_main(lambda: _save_model(dist.unwrap(model), state, Path(directory)))  # its error on every rank


def _save_model(model, state, directory):
    directory.mkdir(parents=True, exist_ok=True)
    c = model.config
    config = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
              **{theirs: getattr(c, ours) for ours, theirs in HF_NAMES.items()},
              "use_parallel_residual": True, "hidden_act": "gelu", "tie_word_embeddings": False,
              "bos_token_id": 0, "eos_token_id": 0, "hidden_dropout": 0.0, "attention_dropout": 0.0,
              "torch_dtype": str(model.gpt_neox.embed_in.weight.dtype).removeprefix("torch.")}
    if isinstance(model, ScalarGPT):  # HF's class has a bias-free score: it would drop score.bias
        config.update(architectures=["GPTNeoXForSequenceClassification"], num_labels=1,
                      bias=model.score_offset)
    write_atomically(directory / "config.json", [json.dumps(config, indent=2)])
    # safetensors: the JSON header (padded to 8 bytes so the data is aligned), then the raw bytes
    dtypes = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for k, v in state.items():
        end = offset + v.numel() * v.element_size()
        header[k] = {"dtype": dtypes[v.dtype], "shape": list(v.shape), "data_offsets": [offset, end]}
        offset = end
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    tensors = (v.reshape(-1).view(torch.uint8).numpy() for v in state.values())  # raw bytes, native = little-endian
    write_atomically(directory / "model.safetensors", [struct.pack("<Q", len(blob)) + blob, *tensors])
