"""
Parity of nanoirl.tokenizer with Hugging Face's `tokenizers` (the independent reference) on a
small byte-level BPE tokenizer.json shaped like Pythia's, trained here so that nothing is
downloaded: BPE model without byte fallback, NFC normalizer, ByteLevel pre-tokenizer (no prefix
space, GPT-2 regex) and decoder, <|endoftext|> = 0 and <|padding|> = 1 as special added tokens,
the 243 single-byte tokens at ids 2..244, merges after them in merge order, and the runs of
24 ... 2 spaces as non-special, normalized added tokens at the end of the vocab.
If Pythia's own tokenizer.json is in the local Hugging Face cache, it is checked too.
"""
import json
import random
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

tokenizers = pytest.importorskip("tokenizers", reason="`tokenizers` is the parity reference")
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers  # noqa: E402
from tokenizers import processors, trainers  # noqa: E402

from nanoirl import hub  # noqa: E402
from nanoirl.tokenizer import Tokenizer  # noqa: E402

NOT_IN_UTF8 = [0xC0, 0xC1, *range(0xF5, 0x100)]  # Pythia has no token for these 13 bytes

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's here, isn't it? They're sure we'll go.",
    "I've seen what you'd done; I'm not mad. Don't worry -- it's FINE!!! (really) [ok] {yes}",
    "SUBREDDIT: r/relationships\n\nTITLE: My boyfriend (25M) forgot my birthday\n\nPOST: We have "
    "been together for 3 years and he forgot.  I don't know what to do.\n\nTL;DR: he forgot",
    "def main(x):\n    return [i ** 2 for i in range(10)]  # squares\n\tif x: print('tab')\n",
    "Prices rose 12.5% in 2023, from $1,299.99 to $1,462.00; 0x1F = 31; 3.14159 2718281828",
    "Café, naïve, résumé, façade, jalapeño, über, Ærøskøbing, Łódź, Ελληνικά, русский.",
    "東京は日本の首都です。中文文本也在这里。한국어 문장도 있습니다。 ひらがなとカタカナ",
    "Emoji: 😀 😂 👍🏽 ❤️ 👩‍👩‍👧 🏳️‍🌈 🇫🇷 — “quotes” ‘single’ … • © ® ™ € £ ¥",
    "Whitespace:  two   three    four\t\ttabs\n\n\nnewlines \r\n crlf   trailing   ",
    "math: a+b=c, x^2 - y^2 = (x-y)(x+y); f'(x) != g''(x); <html><body>hi</body></html>",
] * 4


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    """Train the Pythia-shaped tokenizer with `tokenizers` and save it as tokenizer.json."""
    alphabet = [c for c in pre_tokenizers.ByteLevel.alphabet() if ord(c) not in NOT_IN_UTF8]
    tok = tokenizers.Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2 + 243 + 400, initial_alphabet=alphabet,
                                  special_tokens=["<|endoftext|>", "<|padding|>"],
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens([AddedToken(" " * n, special=False, normalized=True) for n in range(24, 1, -1)])
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    # The shape we mean to mimic (if the trainer changes, fix the fixture, not the tokenizer).
    spec = json.loads(path.read_text())
    vocab = spec["model"]["vocab"]
    assert vocab["<|endoftext|>"] == 0 and vocab["<|padding|>"] == 1
    assert sorted(i for s, i in vocab.items() if len(s) == 1) == list(range(2, 245))
    assert len(spec["model"]["merges"]) >= 300 and spec["model"]["byte_fallback"] is False
    assert [t["content"] for t in spec["added_tokens"][2:]] == [" " * n for n in range(24, 1, -1)]
    return path


@pytest.fixture(scope="module")
def pair(tokenizer_json):
    """(ours, reference) loaded from the same file."""
    return (Tokenizer.from_pretrained(tokenizer_json),
            tokenizers.Tokenizer.from_file(str(tokenizer_json)))


TEXTS = [
    *(" " * n for n in range(1, 31)),
    *("a" + " " * n + "b" for n in range(1, 31)),
    *("x\n" + " " * n + "y" for n in (1, 2, 3, 5, 24, 25, 26, 49)),
    "", " ", "\n", "\n\n", "\t", " \t \n  \n\n   ", "trailing   ", "  leading",
    "tab\tsep\t\tx \t y",
    "hi\n\n  there", "line\r\nwindows\r\n", "a\u00a0b\u3000c\u2028d\x85e\x0bf\x0cg\u1680h\u2009i",
    "café", "cafe\u0301", "Ångström", "A\u030angstro\u0308m", "é\u0301", "\u1e9b\u0323",
    "東京 日本語 中文 한국어", "😀", "👩‍👩‍👧 family", "🏳️‍🌈 flag 🇫🇷", "👍🏽👍🏽👍🏽",
    "1234567890 3.14159 $1,299.99 2023-01-01", "!!!??? ... --- *** ((()))", "a+b=c; x^2 != y'",
    "it's isn't they're we'll I've I'm he'd IT'S DON'T 's 't 're",
    "before<|endoftext|>after", "a <|endoftext|> b", "<|endoftext|><|endoftext|>",
    "x<|padding|>  y", "<|endoftext", "<|endoftext|", "<|end<|endoftext|>oftext|>",
    "  <|padding|>  ",
    "SUBREDDIT: r/x\n\nTITLE: Should I tell my roommate?\n\nPOST: She keeps   eating my food.\n"
    "I don't want to fight... but it's been 3 weeks 😤\n\nTL;DR:",
    *CORPUS[:10],
]


def random_texts(n=300, seed=0):
    """Random strings of pieces that stress the splits: space runs, added tokens, accents."""
    pieces = [" ", "  ", "   ", "\t", "\n", "\n\n", "a", "Z", "é", "e\u0301", "\u0301", "日", "😀",
              "\u200d", "7", "42", ".", "'s", "'", "<|endoftext|>", "<|padding|>", "<|", "|>", "-",
              "\u00a0", "the"]
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(n)]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_tokenizers(pair, text):
    ours, ref = pair
    ids = ours.encode(text)
    assert ids == ref.encode(text).ids
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False)
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


def test_random_texts_match_tokenizers(pair):
    ours, ref = pair
    for text in random_texts():
        ids = ref.encode(text).ids
        assert ours.encode(text) == ids, repr(text)
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False), repr(text)


def test_decode_of_arbitrary_ids_matches(pair):
    """Cut UTF-8 sequences become U+FFFD as in HF; ids beyond the vocab decode to nothing."""
    ours, ref = pair
    rng = random.Random(1)
    for _ in range(200):
        ids = [rng.randrange(ours.vocab_size + 5) for _ in range(rng.randint(0, 12))]
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False), ids


def test_round_trip_is_nfc(pair):
    ours, _ = pair
    for text in TEXTS + random_texts(seed=2):
        assert ours.decode(ours.encode(text)) == unicodedata.normalize("NFC", text), repr(text)


def test_added_tokens_beat_the_regex_and_nfc(pair):
    ours, ref = pair
    two, three = ours.added["  "], ours.added["   "]
    # The space-run tokens are cut out before GPT-2's regex, so they take the space that GPT-2
    # would have attached to the next word: "a", "  ", "b", not "a", " ", " b".
    assert ours.encode("a  b") == [ours.encode("a")[0], two, ours.encode("b")[0]]
    assert ours.encode("   ")[0] == three and len(ours.encode(" " * 27)) == 2
    # <|endoftext|> is matched in the raw text, before NFC: a combining mark after it stays out
    # (NFC of the whole string would have turned '>' + U+0338 into '≯').
    text = "<|endoftext|>\u0338"
    assert ours.encode(text) == ref.encode(text).ids and ours.encode(text)[0] == ours.eos_id
    assert ours.decode(ours.encode(text)) != unicodedata.normalize("NFC", text)


def test_ids_and_sizes(pair):
    ours, ref = pair
    assert (ours.eos_id, ours.pad_id) == (0, 1)
    assert ours.vocab_size == ref.get_vocab_size(with_added_tokens=True)
    assert ours.added[" " * 24] == ours.vocab_size - 23 and ours.added["  "] == ours.vocab_size - 1
    assert ours.encode("<|endoftext|>") == [0]
    assert ours.decode([0, 1]) == "<|endoftext|><|padding|>"
    assert ours.decode([0, 1], skip_special_tokens=True) == ""


def test_rank_equals_id_invariant(tokenizer_json):
    """What tiktoken ranks = ids rely on: each merge makes a vocab token whose id is above the
    previous merge's (hence above its parts' ids too): ids follow merge order."""
    model = json.loads(tokenizer_json.read_text())["model"]
    vocab = model["vocab"]
    merges = [m if isinstance(m, list) else m.split(" ") for m in model["merges"]]
    made = [vocab[a + b] for a, b in merges]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert all(vocab[a + b] > max(vocab[a], vocab[b]) for a, b in merges)


def swap_two_merge_ids(spec):
    """Break ids-follow-merge-order by swapping the ids of the tokens made by merges 10 and 20."""
    vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
    s, t = ("".join(m) if isinstance(m, list) else m.replace(" ", "") for m in merges[10:21:10])
    vocab[s], vocab[t] = vocab[t], vocab[s]


@pytest.mark.parametrize("edit, message", [
    (swap_two_merge_ids, "merge order"),
    (lambda spec: spec["model"]["vocab"].pop("Ġ"), "single-byte"),
    (lambda spec: spec["model"].pop("vocab"), "vocab"),
    (lambda spec: spec["model"].update(type="WordPiece"), "BPE"),
    (lambda spec: spec.update(normalizer={"type": "NFKC"}), "byte-level BPE"),
    (lambda spec: spec["model"]["merges"].append(["x", "nonexistent"]), "merge"),
    (lambda spec: spec["added_tokens"][0].update(lstrip=True), "lstrip"),
])
def test_broken_files_raise_value_error_naming_the_file(tmp_path, tokenizer_json, edit, message):
    spec = json.loads(tokenizer_json.read_text())
    edit(spec)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=message) as info:
        Tokenizer.from_pretrained(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"not json {", b"[1, 2, 3]", b'{"model": {"type": "BPE"}}',
                                     b"\xff\xfe"])
def test_malformed_files_raise_value_error(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_pretrained(path)


def test_from_pretrained_accepts_a_directory(tmp_path, tokenizer_json, pair):
    text = "hi  there<|endoftext|>"
    assert Tokenizer.from_pretrained(tokenizer_json.parent).encode(text) == pair[0].encode(text)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)  # a directory without one


def test_from_pretrained_resolves_names_through_the_hub(monkeypatch, tokenizer_json):
    calls = []

    def resolve(name, files):
        calls.append((name, files))
        return tokenizer_json.parent

    monkeypatch.setattr(hub, "resolve", resolve)
    assert Tokenizer.from_pretrained("pythia-70m").encode("<|endoftext|>") == [0]
    assert calls == [("pythia-70m", ["tokenizer.json"])]


def test_matches_transformers_gpt_neox_tokenizer(tokenizer_json, pair):
    """transformers' own class for Pythia: same ids, and its decode keeps special tokens."""
    transformers = pytest.importorskip("transformers", reason="transformers is a reference")
    hf = transformers.GPTNeoXTokenizer(tokenizer_file=str(tokenizer_json))
    ours = pair[0]
    for text in TEXTS[::3] + random_texts(50, seed=3):
        ids = hf.encode(text)
        assert ours.encode(text) == ids, repr(text)
        assert ours.decode(ids) == hf.decode(ids), repr(text)


def test_real_pythia_tokenizer_if_cached():
    """Pythia's own tokenizer.json, only if it is already in the local HF cache (no download)."""
    try:
        path = hub.resolve("pythia-70m", ["tokenizer.json"], download=False) / "tokenizer.json"
    except FileNotFoundError:
        pytest.skip("Pythia's tokenizer.json is not in the local Hugging Face cache")
    ours, ref = Tokenizer.from_pretrained(path), tokenizers.Tokenizer.from_file(str(path))
    assert (ours.vocab_size, ours.eos_id, ours.pad_id) == (50277, 0, 1)
    assert ours.added[" " * 24] == 50254 and ours.added["  "] == 50276
    for text in TEXTS + random_texts():
        ids = ref.encode(text).ids
        assert ours.encode(text) == ids, repr(text)
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False), repr(text)


def test_nanoirl_does_not_import_hf():
    code = ("import sys, nanoirl.tokenizer\n"
            "print(sorted({'tokenizers', 'transformers'} & set(sys.modules)))")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo)
    assert out.stdout.strip() == "[]", out.stderr


def test_added_pad_token_as_the_tldr_reference_code(tmp_path, tokenizer_json):
    """The TL;DR reference code adds "[PAD]" (id 50277 on Pythia, the first id after the vocab) with
    add_special_tokens and left-pads queries with it: ours reads the saved tokenizer, encodes
    "[PAD]" to that id, pads with it, and data.tokenize left-pads as transformers does."""
    transformers = pytest.importorskip("transformers", reason="transformers is a reference")
    from nanoirl.data import tokenize
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), eos_token="<|endoftext|>")
    size = len(hf)
    hf.add_special_tokens({"pad_token": "[PAD]"})
    hf.save_pretrained(tmp_path)
    ours = Tokenizer.from_pretrained(tmp_path)
    assert ours.pad_id == hf.pad_token_id == size and ours.eos_id == 0
    for text in ["a [PAD] b", "[PAD][PAD]x", "TL;DR:[PAD]", "no pad here  "]:
        assert ours.encode(text) == hf.encode(text), text
    assert ours.decode(ours.encode("a [PAD] b"), skip_special_tokens=True) == "a  b"
    prompts = ["SUBREDDIT: r/x\n\nTITLE: hi", "short"]
    ref = hf(prompts, padding="max_length", max_length=24, padding_side="left")
    examples = [{"prompt": p, "response": " y", "where": "t"} for p in prompts]
    got = tokenize(examples, ours, max_prompt_len=24, max_response_len=4)
    assert got["prompts"].tolist() == ref["input_ids"]
    assert got["prompt_mask"].long().tolist() == ref["attention_mask"]
