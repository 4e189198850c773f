"""
Text data: load and check records, tokenise them into the batch layout of nanoirl/policy.py,
batch them reproducibly, and write synthetic TL;DR-shaped data for dry runs.

Sources (--data, --eval-pairs): a JSONL file, a parquet file, a dataset directory or a Hub
dataset "owner/name[:split]", read record by record in nanoirl/sources.py.
Layouts (read off the fields of the first record):
  demonstrations  {"prompt": str, "response": str}
  tldr            {"subreddit", "title", "post", "summary"}  (TL;DR, as in the N+ PPO code)
                  -> prompt "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:",
                     response " " + summary (+ EOS in tokenize); a prompt too long for
                     --max-prompt-len loses the end of its post as in the reference code
  preferences     {"prompt" or "query", "chosen", "rejected"}  (reward-model evaluation; the
                  reference's preprocessed sets end chosen and rejected with "<|endoftext|>",
                  which is dropped here since tokenize appends EOS)
Extra fields are ignored. Every problem raises DataError (nanoirl/sources.py), whose message is
one line "file:line: what is wrong", so that a script can print it and exit without a traceback.
What is written here (fake data) is whole or not at all: a temp file renamed at the end
(nanoirl/files.py).

    examples = load_demonstrations("tldr.jsonl")
    train = tokenize(examples, tokenizer, max_prompt_len=512, max_response_len=53)
    for step, batch in zip(range(steps), iterate_batches(train, 64, seed=1)): ...
"""
import sys
if __name__ == "__main__":
    import nanoirl.entry  # noqa: F401  (first: a Ctrl-C while torch is imported ends in one line)
import argparse
import json
import os
import random

import torch

from nanoirl.cli import HelpFormatter, positive_int, seed_arg
from nanoirl.files import why_not_written, write_atomically
from nanoirl.policy import left_pad, right_pad
from nanoirl.sources import DataError, data_dir, download, read_records

LAYOUTS = {
    "demonstrations": ("prompt", "response"),
    "tldr": ("subreddit", "title", "post", "summary"),
    "preferences": ("prompt", "chosen", "rejected"),
    "tldr-preferences": ("query", "chosen", "rejected"),  # the reference's preprocessed pairs
}
TLDR_PROMPT = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
MAY_BE_EMPTY = ("subreddit", "title")  # only the text a model reads or writes must be non-empty
EOS_TEXT = "<|endoftext|>"
# what MLIRL Sec. 6.1 trains and evaluates on (the TL;DR reference code's sets)
TLDR_SFT = "vwxyzjn/summarize_from_feedback_tldr_3_filtered"
TLDR_PREFERENCES = "vwxyzjn/summarize_from_feedback_oai_preprocessing_1706381144"
MAX_TRUNCATED_SHARE = 0.05  # above this share of responses cut short, tokenize refuses
FIELDS = {f for fields in LAYOUTS.values() for f in fields}


def load_jsonl(path, layouts):
    """Checked records of one of the given layouts, each as a dict of the prompt and the response
    fields (response, or chosen and rejected) plus "where" = "file:line" for later messages
    (TL;DR records keep their fields for truncation under "tldr")."""
    examples, layout, first = [], None, None
    for where, record in read_records(path, FIELDS):
        if layout is None:  # the layout sharing the most fields with the first line
            layout = max(layouts, key=lambda k: len(set(LAYOUTS[k]) & record.keys()))
            first = where
            if not set(LAYOUTS[layout]) & record.keys():
                expected = " or ".join("{" + ", ".join(LAYOUTS[k]) + "}" for k in layouts)
                raise DataError(f"{where}: fields {sorted(record)} match no layout; expected {expected}")
        for field in LAYOUTS[layout]:
            value = record.get(field)
            if field not in record:
                raise DataError(f"{where}: missing field {field!r} (the {layout} layout, "
                                f"read off {first}, needs {', '.join(LAYOUTS[layout])})")
            if not isinstance(value, str):
                raise DataError(f"{where}: field {field!r} is {type(value).__name__}, expected a string")
            if not (value if field == "response" else value.strip()) and field not in MAY_BE_EMPTY:
                raise DataError(f"{where}: field {field!r} is empty")  # a sampled response may be blank
        if layout == "tldr":  # the reference code's leading space (its summaries have none)
            example = {"prompt": TLDR_PROMPT.format(**record), "response": " " + record["summary"],
                       "tldr": {k: record[k] for k in ("subreddit", "title", "post")}}
        elif layout == "tldr-preferences":
            example = {"prompt": record["query"], **{k: record[k].removesuffix(EOS_TEXT)
                                                     for k in ("chosen", "rejected")}}
        else:
            example = {k: record[k] for k in LAYOUTS[layout]}
        examples.append({**example, "where": where, "source": str(path)})
    if not examples:
        raise DataError(f"{path}: empty file; expected one JSON object per line")
    return examples


def load_demonstrations(source):
    """Demonstrations from {"prompt", "response"} or TL;DR {"subreddit", "title", "post", "summary"}."""
    return load_jsonl(source, ["demonstrations", "tldr"])


def load_preferences(source):
    """Preference pairs from {"prompt" or "query", "chosen", "rejected"}."""
    return load_jsonl(source, ["preferences", "tldr-preferences"])


def truncate_tldr_post(fields, encode, max_len):
    """(prompt token ids, how) of a TL;DR post cut as the reference code cuts it (query_truncate_field
    "post", truncate text "\n"): while the formatted prompt has more than max_len tokens, the post
    is cut at its last newline, or, when it has none left, loses its last character. The
    SUBREDDIT / TITLE header and the trailing "TL;DR:" stay. how: "newline" or "characters"."""
    post, how = fields["post"], "newline"
    ids = encode(TLDR_PROMPT.format(**fields))
    while len(ids) > max_len:
        if not post:
            return None, "header"  # the header and "TL;DR:" alone are too long
        cut = post.rfind("\n")
        how = how if cut >= 0 else "characters"
        post = post[:cut] if cut >= 0 else post[:-1]
        ids = encode(TLDR_PROMPT.format(**{**fields, "post": post}))
    return ids, how


def tokenize(examples, tokenizer, max_prompt_len, max_response_len, drop_too_long=False,
             max_truncated_share=MAX_TRUNCATED_SHARE):
    """Examples -> dict of tensors in the batch layout of nanoirl/policy.py:
      prompts (B, P) left-padded to P = max_prompt_len, prompt_mask (B, P), and for each response
      field (B, R) with EOS appended, right-padded or truncated to R = max_response_len, under
      the keys "responses" (demonstrations) or "chosen" and "rejected" (preferences).
    A TL;DR prompt longer than P loses the end of its post (truncate_tldr_post); any other prompt
    longer than P is an error (cutting it would change the task). A response longer than R - 1
    tokens loses its EOS: it is truncated, not ended. Those are counted and printed; above
    max_truncated_share of them it is an error. drop_too_long drops both kinds of example
    instead (as the reference code filters its SFT set), and prints how many.
    tokenizer: anything with encode(str) -> list[int], eos_id and pad_id."""
    eos, pad = tokenizer.eos_id, tokenizer.pad_id
    outputs = {"response": "responses", "chosen": "chosen", "rejected": "rejected"}
    prompts, responses = [], {outputs[k]: [] for k in outputs if k in examples[0]}
    cut = {"newline": 0, "characters": 0}
    dropped, long_responses = 0, 0
    for ex in examples:
        ids = tokenizer.encode(ex["prompt"])
        if not ids:
            raise DataError(f"{ex['where']}: prompt has no tokens")
        if len(ids) > max_prompt_len and "tldr" in ex:
            ids, how = truncate_tldr_post(ex["tldr"], tokenizer.encode, max_prompt_len)
            if ids is None and not drop_too_long:
                raise DataError(f"{ex['where']}: the TL;DR header and 'TL;DR:' alone have more than "
                                f"--max-prompt-len {max_prompt_len} tokens")
            cut[how] = cut.get(how, 0) + 1
        elif len(ids) > max_prompt_len:
            if not drop_too_long:
                raise DataError(f"{ex['where']}: prompt has {len(ids)} tokens, more than --max-prompt-len "
                                f"{max_prompt_len} (--drop-too-long drops such examples)")
            ids = None
        outs = {}
        for field, key in outputs.items():
            if field in ex:
                out = tokenizer.encode(ex[field])
                if eos in out:  # the response would end early, silently
                    raise DataError(f"{ex['where']}: {field} contains the EOS token (id {eos})")
                outs[key] = out + [eos]
        too_long = any(len(out) > max_response_len for out in outs.values())
        if ids is None or (too_long and drop_too_long):
            dropped += 1
            continue
        long_responses += too_long
        prompts.append(ids)
        for key, out in outs.items():
            responses[key].append(out[:max_response_len])
    n = len(examples)
    where = examples[0].get("source", examples[0]["where"])
    if cut["newline"] or cut["characters"]:
        print(f"data: {where}: {cut['newline'] + cut['characters']} of {n} TL;DR posts truncated to fit "
              f"--max-prompt-len {max_prompt_len} ({cut['newline']} at a newline, {cut['characters']} "
              "by characters where no newline was left)")
    if dropped:
        print(f"data: {where}: --drop-too-long dropped {dropped} of {n} examples")
    if long_responses:
        print(f"data: {where}: {long_responses} of {n} responses have more than --max-response-len "
              f"{max_response_len} tokens with their EOS: truncated, not ended")
        if long_responses > max_truncated_share * n:
            raise DataError(f"{where}: {long_responses} of {n} responses ({long_responses / n:.1%}, above "
                            f"{max_truncated_share:.0%}) have more than --max-response-len {max_response_len} "
                            "tokens with their EOS; raise --max-response-len, or --drop-too-long drops them, "
                            "or --truncate-long-responses keeps them truncated")
    if not prompts:
        raise DataError(f"{where}: --drop-too-long dropped every example")
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
    refuses an existing file. Atomic (nanoirl/files.py:write_atomically): path is whole or as it was."""
    write_atomically(path, (json.dumps(r) + "\n" for r in records), mode)


def main(argv=None):
    # python -m nanoirl.data fake_tldr.jsonl --n 256 [--preferences] [--force]
    # python -m nanoirl.data --download vwxyzjn/summarize_from_feedback_tldr_3_filtered
    parser = argparse.ArgumentParser(prog="python -m nanoirl.data",
                                     description="Write synthetic TL;DR-shaped JSONL for dry runs, "
                                                 "or save Hub datasets where --data finds them.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("path", nargs="?", help="output JSONL file")
    parser.add_argument("--n", type=positive_int, default=256, help="number of records")
    parser.add_argument("--seed", type=seed_arg, default=0, help="random seed")
    parser.add_argument("--preferences", action="store_true",
                        help='write {"prompt", "chosen", "rejected"} pairs instead of TL;DR posts')
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    parser.add_argument("--download", nargs="+", metavar="OWNER/NAME",
                        help=f"save these Hub datasets under $NANOIRL_DATA (now {data_dir()}); "
                             f"MLIRL Sec. 6.1 needs {TLDR_SFT} {TLDR_PREFERENCES}")
    args = parser.parse_args(argv)
    if not args.path and not args.download:
        parser.error("give the path of the JSONL file to write, or --download NAME")
    if args.path and os.path.isdir(args.path):
        parser.error(f"{args.path} is a directory; give the path of the JSONL file to write")
    if args.path and os.path.exists(args.path) and not args.force:
        parser.error(f"{args.path} exists; pass --force to overwrite it")
    try:
        for name in args.download or []:
            print(f"saved {name} to {download(name)}")
        if args.path:
            write_jsonl(args.path, fake_tldr(args.n, args.seed, args.preferences), "w" if args.force else "x")
            print(f"wrote {args.n} records to {args.path}")
    except DataError as e:
        parser.error(str(e))
    except OSError as e:
        parser.error(f"cannot write {args.path}: {why_not_written(e)}; nothing was written")
    except KeyboardInterrupt:  # exit status 130 = 128 + SIGINT, as a shell reports a Ctrl-C
        print(f"error: interrupted; nothing was written{' to ' + args.path if args.path else ''}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
