"""
Text data: load and check JSONL files, tokenise them into the batch layout of nanoirl/policy.py,
batch them reproducibly, and write synthetic TL;DR-shaped data for dry runs.

Layouts (one JSON object per line; the layout is read off the fields of the first line):
  demonstrations  {"prompt": str, "response": str}
  tldr            {"subreddit", "title", "post", "summary"}  (TL;DR, as in the N+ PPO code)
                  -> prompt "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:",
                     response " " + summary
  preferences     {"prompt": str, "chosen": str, "rejected": str}  (reward-model evaluation)
Extra fields are ignored. Every problem raises DataError, whose message is one line
"file:line: what is wrong", so that a script can print it and exit without a traceback.

    examples = load_demonstrations("tldr.jsonl")
    train = tokenize(examples, tokenizer, max_prompt_len=512, max_response_len=53)
    for step, batch in zip(range(steps), iterate_batches(train, 64, seed=1)): ...
"""
import argparse
import json
import os
import random
import stat

import torch

from nanoirl.policy import left_pad, right_pad

LAYOUTS = {
    "demonstrations": ("prompt", "response"),
    "tldr": ("subreddit", "title", "post", "summary"),
    "preferences": ("prompt", "chosen", "rejected"),
}
TLDR_PROMPT = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
MAY_BE_EMPTY = ("subreddit", "title")  # only the text a model reads or writes must be non-empty


class DataError(ValueError):
    """A bad input file. str(error) is one line: 'file:line: what is wrong'."""


def read_jsonl(path):
    """Yield (line number, dict) for each non-blank line of a JSONL file."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise DataError(f"{path}: is a directory, not a JSONL file")
        if not stat.S_ISREG(mode):  # a FIFO would block, and be gone on --resume
            raise DataError(f"{path}: is {'a FIFO (named pipe)' if stat.S_ISFIFO(mode) else 'not a regular file'}, "
                            "not a JSONL file")
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    with f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise DataError(f"{path}:{n}: not valid UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}")
            for k, v in record.items():  # JSON may escape a lone surrogate, which no text encodes
                if isinstance(v, str) and not v.isascii():
                    try:
                        v.encode("utf-8")
                    except UnicodeEncodeError as e:
                        raise DataError(f"{path}:{n}: field {k!r} holds a lone surrogate "
                                        f"{v[e.start]!r} at character {e.start}, which is not text") from None
            yield n, record


def load_jsonl(path, layouts):
    """Checked records of one of the given layouts, each as a dict of the prompt and the response
    fields (response, or chosen and rejected) plus "where" = "file:line" for later messages."""
    examples, layout, first = [], None, None
    for n, record in read_jsonl(path):
        where = f"{path}:{n}"
        if layout is None:  # the layout sharing the most fields with the first line
            layout = max(layouts, key=lambda k: len(set(LAYOUTS[k]) & record.keys()))
            first = n
            if not set(LAYOUTS[layout]) & record.keys():
                expected = " or ".join("{" + ", ".join(LAYOUTS[k]) + "}" for k in layouts)
                raise DataError(f"{where}: fields {sorted(record)} match no layout; expected {expected}")
        for field in LAYOUTS[layout]:
            value = record.get(field)
            if field not in record:
                raise DataError(f"{where}: missing field {field!r} (the {layout} layout, "
                                f"read off line {first}, needs {', '.join(LAYOUTS[layout])})")
            if not isinstance(value, str):
                raise DataError(f"{where}: field {field!r} is {type(value).__name__}, expected a string")
            if not value.strip() and field not in MAY_BE_EMPTY:
                raise DataError(f"{where}: field {field!r} is empty")
        if layout == "tldr":
            example = {"prompt": TLDR_PROMPT.format(**record), "response": " " + record["summary"]}
        else:
            example = {k: record[k] for k in LAYOUTS[layout]}
        examples.append({**example, "where": where})
    if not examples:
        raise DataError(f"{path}: empty file; expected one JSON object per line")
    return examples


def load_demonstrations(path):
    """Demonstrations from {"prompt", "response"} or TL;DR {"subreddit", "title", "post", "summary"}."""
    return load_jsonl(path, ["demonstrations", "tldr"])


def load_preferences(path):
    """Preference pairs from {"prompt", "chosen", "rejected"}."""
    return load_jsonl(path, ["preferences"])


def tokenize(examples, tokenizer, max_prompt_len, max_response_len):
    """Examples -> dict of tensors in the batch layout of nanoirl/policy.py:
      prompts (B, P) left-padded to P = max_prompt_len, prompt_mask (B, P), and for each response
      field (B, R) with EOS appended, right-padded or truncated to R = max_response_len, under
      the keys "responses" (demonstrations) or "chosen" and "rejected" (preferences).
    A prompt longer than P is an error (cutting it would change the task); a response longer
    than R - 1 loses its EOS: it is truncated, not ended (count them with policy.ends_with_eos).
    tokenizer: anything with encode(str) -> list[int], eos_id and pad_id."""
    eos, pad = tokenizer.eos_id, tokenizer.pad_id
    outputs = {"response": "responses", "chosen": "chosen", "rejected": "rejected"}
    prompts, responses = [], {outputs[k]: [] for k in outputs if k in examples[0]}
    for ex in examples:
        ids = tokenizer.encode(ex["prompt"])
        if not ids:
            raise DataError(f"{ex['where']}: prompt has no tokens")
        if len(ids) > max_prompt_len:
            raise DataError(f"{ex['where']}: prompt has {len(ids)} tokens, "
                            f"more than --max-prompt-len {max_prompt_len}")
        prompts.append(ids)
        for field, key in outputs.items():
            if field in ex:
                ids = tokenizer.encode(ex[field])
                if eos in ids:  # the response would end early, silently
                    raise DataError(f"{ex['where']}: {field} contains the EOS token (id {eos})")
                responses[key].append((ids + [eos])[:max_response_len])
    prompts, prompt_mask = left_pad(prompts, pad, max_prompt_len)
    return {"prompts": prompts, "prompt_mask": prompt_mask,
            **{k: right_pad(v, pad, max_response_len) for k, v in responses.items()}}


def batch_indices(n, batch_size, step, seed):
    """Indices of batch number `step`: the stream of epochs, each a fresh permutation of range(n),
    cut into consecutive batches. A pure function of (step, seed), so a resumed run draws exactly
    the batches of an uninterrupted one without saving any iterator state."""
    start, stop = step * batch_size, (step + 1) * batch_size
    perms = [torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
             for epoch in range(start // n, (stop - 1) // n + 1)]  # epoch e gets seed*1_000_003+e
    offset = (start // n) * n
    return torch.cat(perms)[start - offset:stop - offset]


def iterate_batches(data, batch_size, seed, start=0):
    """Endless batches (dicts of tensors sliced from `data`) for steps start, start + 1, ..."""
    n = len(next(iter(data.values())))
    step = start
    while True:
        idx = batch_indices(n, batch_size, step, seed)
        yield {k: v[idx] for k, v in data.items()}
        step += 1


# ---- synthetic TL;DR-shaped data for dry runs and tests ----------------------------------------
WORDS = ("i my me we you he she it they the a an and but so because if when then to of in on at "
         "for with about from up out just really very not never always time day week year job "
         "work friend friends girlfriend boyfriend family mom dad money car house school help "
         "advice feel think want know said told asked going went got make made still now").split()
SUBREDDITS = ["relationships", "AskReddit", "personalfinance", "jobs", "tifu", "advice"]


def fake_tldr(n, seed=0, preferences=False):
    """n TL;DR records of random words, small enough for a dry run on a CPU: posts of 5-25
    words, so that a prompt fits --max-prompt-len 256 even in byte tokens, and summaries of 2-6
    words, which fit --max-response-len 53 with their EOS. With preferences=True,
    {"prompt", "chosen", "rejected"} pairs of random summaries instead. A generator: records are
    made one at a time, so any n streams to a file."""
    rng = random.Random(seed)
    words = lambda lo, hi: " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))
    for _ in range(n):
        r = {"subreddit": rng.choice(SUBREDDITS), "title": words(3, 12), "post": words(5, 25),
             "summary": words(2, 6)}
        if preferences:
            r = {"prompt": TLDR_PROMPT.format(**r), "chosen": " " + r["summary"],
                 "rejected": " " + words(2, 6)}
        yield r


def write_jsonl(path, records, mode="w"):
    """Write records one JSON line each, as they come (records may be a generator). mode "x"
    refuses an existing file."""
    with open(path, mode, encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    # python -m nanoirl.data fake_tldr.jsonl --n 256 [--preferences] [--force]
    from nanoirl.run import HelpFormatter, positive_int, seed_arg
    parser = argparse.ArgumentParser(description="Write synthetic TL;DR-shaped JSONL for dry runs.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("path", help="output JSONL file")
    parser.add_argument("--n", type=positive_int, default=256, help="number of records")
    parser.add_argument("--seed", type=seed_arg, default=0, help="random seed")
    parser.add_argument("--preferences", action="store_true",
                        help='write {"prompt", "chosen", "rejected"} pairs instead of TL;DR posts')
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args()
    if os.path.isdir(args.path):
        parser.error(f"{args.path} is a directory; give the path of the JSONL file to write")
    if os.path.exists(args.path) and not args.force:
        parser.error(f"{args.path} exists; pass --force to overwrite it")
    try:
        write_jsonl(args.path, fake_tldr(args.n, args.seed, args.preferences), "w" if args.force else "x")
    except OSError as e:
        parser.error(f"cannot write {args.path}: {e.strerror}")
    print(f"wrote {args.n} records to {args.path}")
