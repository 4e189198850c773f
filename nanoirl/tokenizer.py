"""
The Pythia (GPT-NeoX) tokenizer on tiktoken, built from a Hugging Face tokenizer.json.

What Hugging Face's `tokenizers` does with Pythia's tokenizer.json, step by step (this file
redoes each step; tests/test_tokenizer.py checks the ids against `tokenizers` itself):
  1. added tokens whose `normalized` flag is false (<|endoftext|> id 0, <|padding|> id 1) are cut
     out of the RAW text, leftmost-longest;
  2. each remaining piece is NFC-normalised on its own;
  3. added tokens whose `normalized` flag is true (runs of 24 ... 2 spaces, ids 50254-50276) are cut
     out of the normalised pieces, leftmost-longest. They win over the regex: "a  b" becomes
     "a", "  ", "b" rather than GPT-2's "a", " ", " b";
  4. what is left is split with GPT-2's regex and each chunk is byte-level BPE encoded (tiktoken).
Decoding joins the bytes of the tokens and reads them as UTF-8, a bad byte becoming U+FFFD.
"""
import json
import re
import unicodedata
from pathlib import Path

import tiktoken

# GPT-2's split (HF ByteLevel pre-tokenizer, use_regex=True): contractions, letter runs, digit
# runs and symbol runs, each with an optional leading space; a run of whitespace leaves its last
# space to the word that follows ("\s+(?!\S)").
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Bytes that never occur in UTF-8 text (0xC0, 0xC1 and 0xF5-0xFF): Pythia has no token for them,
# and tiktoken never needs one, since a Python str always encodes to valid UTF-8.
NOT_IN_UTF8 = {0xC0, 0xC1, *range(0xF5, 0x100)}


def byte_to_unicode():
    """GPT-2's table that writes every byte as a printable character, so a vocab entry is a plain
    string: printable bytes stand for themselves, the others move to chr(256 + n) (space -> 'Ġ',
    newline -> 'Ċ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), 256)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


BYTE_OF_CHAR = {c: b for b, c in byte_to_unicode().items()}


def token_bytes(token):
    """The bytes a token string stands for, as HF's ByteLevel decoder reads it: byte-level
    characters map back to their bytes; a token with any other character (the added space runs,
    whose spaces are real U+0020) is taken as UTF-8 as it is."""
    if all(c in BYTE_OF_CHAR for c in token):
        return bytes(BYTE_OF_CHAR[c] for c in token)
    return token.encode("utf-8")


def split_on(text, pattern):
    """Yield (piece, is_added_token) covering text, cut at the matches of pattern (None: no cut)."""
    start = 0
    for m in pattern.finditer(text) if pattern else ():
        if m.start() > start:
            yield text[start:m.start()], False
        yield m.group(), True
        start = m.end()
    if start < len(text):
        yield text[start:], False


def added_pattern(contents):
    """A regex matching any of contents, leftmost-longest like HF's added-token trie: the regex
    engine stops at the leftmost position where any alternative matches, and tries the
    alternatives longest first."""
    contents = sorted(contents, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, contents))) if contents else None


class Tokenizer:
    """Byte-level BPE tokenizer read from a tokenizer.json (Pythia's, or one shaped like it)."""

    def __init__(self, path):
        path = Path(path)

        def fail(why):
            raise ValueError(f"{path}: {why}")

        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            fail(f"not a JSON tokenizer file ({e})")
        model = spec.get("model") if isinstance(spec, dict) else None
        if not isinstance(model, dict) or model.get("type") != "BPE":
            fail("not a BPE tokenizer (model.type must be 'BPE')")
        vocab, merges = model.get("vocab"), model.get("merges")
        if not isinstance(vocab, dict) or not vocab or not isinstance(merges, list):
            fail("model.vocab (a dict) and model.merges (a list) are required")
        # Only GPT-2-style byte-level BPE is rebuilt here; anything else would silently differ.
        pre, dec, post = (spec.get(k) or {} for k in ("pre_tokenizer", "decoder", "post_processor"))
        byte_level = (pre.get("type") == dec.get("type") == "ByteLevel"
                      and post.get("type", "ByteLevel") == "ByteLevel"
                      and not pre.get("add_prefix_space") and pre.get("use_regex", True))
        extras = ("byte_fallback", "ignore_merges", "dropout", "continuing_subword_prefix",
                  "end_of_word_suffix")
        plain_bpe = not any(model.get(k) for k in extras)
        if not (byte_level and plain_bpe and spec.get("normalizer") in (None, {"type": "NFC"})):
            fail("only GPT-2-style byte-level BPE is supported (ByteLevel pre-tokenizer without "
                 "prefix space, ByteLevel decoder, NFC or no normalizer, plain BPE model)")
        self.nfc = spec.get("normalizer") is not None
        added = spec.get("added_tokens") or []
        flags = ("lstrip", "rstrip", "single_word")
        if not all(isinstance(t, dict) and {"id", "content", "special", "normalized"} <= t.keys()
                   and t["content"] and not any(t.get(f) for f in flags) for t in added):
            fail("each added token needs id, content, special and normalized, "
                 "and lstrip, rstrip, single_word are not supported")

        # Added tokens, in two groups as HF matches them (see the module docstring). HF normalises
        # the content of a `normalized` token before matching it, so we do too.
        nfc = (lambda s: unicodedata.normalize("NFC", s)) if self.nfc else (lambda s: s)
        self.added = {(nfc(t["content"]) if t["normalized"] else t["content"]): t["id"]
                      for t in added}
        self.raw_added = added_pattern([t["content"] for t in added if not t["normalized"]])
        self.norm_added = added_pattern([nfc(t["content"]) for t in added if t["normalized"]])
        self.special_ids = {t["id"] for t in added if t["special"]}
        self.eos_id = self.added.get("<|endoftext|>")  # Pythia: 0, and bos = eos
        # Pythia's pad is <|padding|> (1); the TL;DR reference code adds a "[PAD]" token (50277)
        # and pads with it, so a tokenizer.json that has one pads with it
        self.pad_id = self.added.get("[PAD]", self.added.get("<|padding|>"))

        # Decoding: the bytes of every id. Ids not in the file (Pythia's model has 50304 output
        # rows for 50277 tokens) decode to nothing, as in HF.
        id_to_token = {i: s for s, i in vocab.items()} | {t["id"]: t["content"] for t in added}
        self.id_bytes = {i: token_bytes(s) for i, s in id_to_token.items()}
        self.vocab_size = max(id_to_token) + 1

        # tiktoken's BPE repeatedly merges the adjacent pair whose concatenation has the lowest
        # rank; HF's merges the pair that comes first in `merges`. tiktoken's own GPT-2 encoding
        # is GPT-2's merges with rank = merge order; here rank = id, which is the same order when
        # the merges make strictly increasing ids (true of Pythia: its ids follow merge order),
        # so that is checked rather than assumed. Single bytes start every chunk and are never
        # merged into, so their ranks are just their ids.
        ranks = {bytes([BYTE_OF_CHAR[s]]): i for s, i in vocab.items()
                 if len(s) == 1 and s in BYTE_OF_CHAR}
        missing = [b for b in range(256) if b not in NOT_IN_UTF8 and bytes([b]) not in ranks]
        if missing:
            fail(f"no single-byte token for byte(s) {missing[:5]}...; UTF-8 text needs all 243")
        last = -1
        for n, merge in enumerate(merges):
            pair = merge.split(" ", 1) if isinstance(merge, str) else merge
            if len(pair) != 2 or not all(s in vocab for s in (*pair, "".join(pair))):
                fail(f"merge {n} {merge!r} is not a pair of vocab tokens that makes a vocab token")
            a, b = pair
            if vocab[a + b] <= last:
                fail(f"merge {n} makes id {vocab[a + b]}, not above the previous merge's {last}: "
                     "ids must follow merge order for tiktoken ranks to equal ids")
            last = ranks[token_bytes(a + b)] = vocab[a + b]
        # Vocab entries that no merge makes (e.g. the copies of the added tokens at ids 0 and 1)
        # stay out of `ranks`: HF's BPE can never produce them, so tiktoken must not either.
        self.bpe = tiktoken.Encoding(path.name, pat_str=GPT2_SPLIT, mergeable_ranks=ranks,
                                     special_tokens={})

    def encode(self, text):
        """str -> list of token ids, as HF's tokenizer.encode(text) (Pythia adds no BOS/EOS)."""
        ids = []
        for piece, is_added in split_on(text, self.raw_added):
            if is_added:
                ids.append(self.added[piece])
                continue
            # NFC per piece, as HF: a combining mark after <|endoftext|> must not merge into it.
            piece = unicodedata.normalize("NFC", piece) if self.nfc else piece
            for sub, is_added in split_on(piece, self.norm_added):
                ids.extend([self.added[sub]] if is_added else self.bpe.encode_ordinary(sub))
        return ids

    def decode(self, ids, skip_special_tokens=False):
        """list of ids -> str, as transformers' tokenizer.decode(ids) (which keeps special tokens;
        note that `tokenizers`' own decode skips them by default)."""
        ids = ids.tolist() if hasattr(ids, "tolist") else ids  # a tensor or array works too
        skip = self.special_ids if skip_special_tokens else ()
        data = b"".join(self.id_bytes.get(i, b"") for i in ids if i not in skip)
        return data.decode("utf-8", errors="replace")

    @classmethod
    def from_pretrained(cls, name_or_path):
        """A tokenizer.json file, a directory holding one, or a model name (e.g. 'pythia-1b')
        resolved by nanoirl.hub."""
        path = Path(name_or_path).expanduser()
        if path.is_dir():
            path = path / "tokenizer.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path.parent} has no tokenizer.json")
        elif not path.is_file():
            from nanoirl.hub import resolve  # only names need the hub (and its download code)
            path = resolve(str(name_or_path), ["tokenizer.json"]) / "tokenizer.json"
        return cls(path)


class ByteTokenizer:
    """UTF-8 bytes as tokens 2..257 with EOS 0 and pad 1, as Pythia numbers them. Only for dry
    runs of randomly initialised models (--model random:pythia-...) when no tokenizer.json is at
    hand: the token counts differ from Pythia's, the shapes and the code paths do not."""
    eos_id, pad_id, vocab_size = 0, 1, 258

    def encode(self, text):
        return [b + 2 for b in unicodedata.normalize("NFC", text).encode("utf-8")]

    def decode(self, ids):
        return bytes(int(i) - 2 for i in ids if 2 <= int(i) < 258).decode("utf-8", errors="replace")

    def save(self, path):
        """Write a tokenizer.json that Tokenizer reads back as these same ids (GPT-2's byte-level
        BPE with no merges, byte b at id b + 2, the 243 bytes of UTF-8 text): a dry run's saved
        policy/ then works as the next script's --model."""
        vocab = {"<|endoftext|>": 0, "<|padding|>": 1,
                 **{c: b + 2 for b, c in byte_to_unicode().items() if b not in NOT_IN_UTF8}}
        added = [{"id": i, "content": s, "special": True, "normalized": False, "single_word": False,
                  "lstrip": False, "rstrip": False} for i, s in enumerate(["<|endoftext|>", "<|padding|>"])]
        spec = {"added_tokens": added, "normalizer": {"type": "NFC"},
                "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
                "decoder": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": vocab, "merges": []}}
        Path(path).write_text(json.dumps(spec), encoding="utf-8")
