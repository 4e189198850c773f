"""
Text data: load and check records, tokenise them into the batch layout of nanoirl/policy.py,
batch them reproducibly, and write synthetic TL;DR-shaped data for dry runs.

Sources (--data, --eval-pairs): a JSONL file (one JSON object per line), a parquet file, a
directory written by `datasets`' save_to_disk, or a Hub dataset "owner/name[:split]", looked up
first as a save_to_disk directory under $NANOIRL_DATA (default ./data), then fetched with the
optional `datasets` package (`python -m nanoirl.data --download owner/name` saves one there).
Layouts (read off the fields of the first record):
  demonstrations  {"prompt": str, "response": str}
  tldr            {"subreddit", "title", "post", "summary"}  (TL;DR, as in the N+ PPO code)
                  -> prompt "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:",
                     response " " + summary (+ EOS in tokenize); a prompt too long for
                     --max-prompt-len loses the end of its post as in the reference code
  preferences     {"prompt" or "query", "chosen", "rejected"}  (reward-model evaluation; the
                  reference's preprocessed sets end chosen and rejected with "<|endoftext|>",
                  which is dropped here since tokenize appends EOS)
Extra fields are ignored. Every problem raises DataError, whose message is one line
"file:line: what is wrong", so that a script can print it and exit without a traceback. A name
meant as a file (a typo of one) is said to be missing, never looked up on the Hub; offline, the
Hub is given up after a 3 s reachability check (nanoirl/hub.py), as for models. What is written
here (fake data, downloads) is whole or not at all: a temp file renamed at the end.

    examples = load_demonstrations("tldr.jsonl")
    train = tokenize(examples, tokenizer, max_prompt_len=512, max_response_len=53)
    for step, batch in zip(range(steps), iterate_batches(train, 64, seed=1)): ...
"""
import sys
if __name__ == "__main__":  # a Ctrl-C while torch is imported (seconds) ends in one line too
    sys.excepthook = lambda kind, e, tb: (print("error: interrupted while starting; nothing was written", file=sys.stderr)
                                          if issubclass(kind, KeyboardInterrupt) else sys.__excepthook__(kind, e, tb))
import argparse
import difflib
import errno
import json
import os
import random
import re
import shutil
import stat
from pathlib import Path

import torch

from nanoirl.hub import reachable
from nanoirl.policy import left_pad, right_pad

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
# names that are files, never Hub datasets "owner/name" (a typo of a local file must not go to the Hub)
FILE_SUFFIXES = {".json", ".jsonl", ".parquet", ".csv", ".tsv", ".txt", ".arrow", ".gz", ".zip"}


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


def data_dir():
    return Path(os.environ.get("NANOIRL_DATA", "data"))


def hub_offline():
    """Whether the user asked for no network (then `datasets` reads only its own cache, fast)."""
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def missing_file(name):
    """For a name that is no existing path but was meant as a file (a file extension, an existing
    directory before its last '/', or a near-miss of an existing file): the one-line error that
    says so; None for a name that can only be a Hub dataset."""
    path = Path(name)
    if not path.parent.is_dir():
        return None if path.suffix.lower() not in FILE_SUFFIXES else f"{name}: no such file"
    near = difflib.get_close_matches(path.name, [p.name for p in path.parent.iterdir()], n=1, cutoff=0.8)
    if near:
        return f"{name}: no such file; did you mean {path.parent / near[0]}?"
    return f"{name}: no such file in the directory {path.parent}"


def read_dataset(source):
    """The rows of a parquet file, a save_to_disk directory or a Hub dataset, "source[:split]"
    (split "train" by default, "validation[:2048]" slices). Needs the optional `datasets`."""
    name, split = source, None
    m = re.fullmatch(r"(.+?):(\w+(?:\[:\d+\])?)", source)  # name:split or name:split[:n]
    if m and not Path(source).exists():
        name, split = m.groups()
    local = Path(name) if Path(name).exists() else data_dir() / name
    get = (f"python -m nanoirl.data --download {name} saves it to {data_dir() / name} "
           "($NANOIRL_DATA moves that folder); or pass a JSONL file")
    if not Path(name).exists() and not re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", name):
        raise DataError(f"{source}: no such file, directory or Hub dataset owner/name")
    if not local.exists() and (why := missing_file(name)):
        raise DataError(why)
    if split and local.is_file() and local.suffix != ".parquet":
        raise DataError(f"{source}: {name} is a file; a split ':{split}' applies to a saved dataset, "
                        f"a parquet file or a Hub dataset only")
    if local.is_dir() and not any((local / f).exists() for f in ("dataset_dict.json", "state.json")):
        raise DataError(f"{local}: is a directory, not a JSONL file or a saved dataset "
                        "(datasets' save_to_disk writes dataset_dict.json or state.json)")
    try:
        import datasets  # optional: only for sources other than JSONL
    except ImportError:
        raise DataError(f"{source}: reading it needs the `datasets` package: pip install datasets; "
                        f"then {get}") from None
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a failure is one DataError line below
    datasets.disable_progress_bars()
    if not local.exists() and not hub_offline() and (offline := reachable()):  # datasets would retry ~30 s
        raise DataError(f"{source}: not in {local}, and {offline}; with the network, {get}")
    try:
        if local.suffix == ".parquet":
            ds = datasets.Dataset.from_parquet(str(local))
        elif local.is_dir():
            ds = datasets.load_from_disk(str(local))
        else:  # the Hub (or datasets' own cache)
            ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # offline, no such dataset, a broken file or directory, ...
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        if local.exists():  # a local file or directory: nothing to download
            kind = "a parquet file" if local.suffix == ".parquet" else "a saved dataset"
            raise DataError(f"{local}: cannot read it as {kind} ({why})") from None
        raise DataError(f"{source}: not in {local} and not loadable ({why}); with the network, {get}") from None
    m = re.fullmatch(r"(\w+)(?:\[:(\d+)\])?", split or "train")
    if isinstance(ds, datasets.DatasetDict):  # a saved Dataset is one split already
        if not m or m.group(1) not in ds:
            raise DataError(f"{source}: no split {split!r}; the splits are {', '.join(ds)}")
        ds = ds[m.group(1)]
    if local.exists() and m.group(2):  # (load_dataset slices by itself)
        ds = ds.select(range(min(int(m.group(2)), len(ds))))
    # the text columns and any field of a layout (one that is not text is then named as such);
    # the preprocessed sets also hold token lists: not read here
    text = [c for c, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")
            or c in FIELDS]
    return ds.select_columns(text)


def read_records(source):
    """Yield (where, dict): "file:line" of a JSONL file, "source row i" of a dataset."""
    path = Path(source)
    if path.suffix == ".jsonl" or (path.exists() and not path.is_dir() and path.suffix != ".parquet"):
        for n, record in read_jsonl(path):
            yield f"{path}:{n}", record
        return
    for i, record in enumerate(read_dataset(str(source))):
        yield f"{source} row {i}", record


def load_jsonl(path, layouts):
    """Checked records of one of the given layouts, each as a dict of the prompt and the response
    fields (response, or chosen and rejected) plus "where" = "file:line" for later messages
    (TL;DR records keep their fields for truncation under "tldr")."""
    examples, layout, first = [], None, None
    for where, record in read_records(path):
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
    refuses an existing file. Atomic (write_atomically): path is whole or as it was."""
    write_atomically(path, (json.dumps(r) + "\n" for r in records), mode)


def write_atomically(path, texts, mode="w"):
    """Write the strings `texts` (streamed: a generator is never held whole) to a temp file beside
    `path`, then rename it onto path: path is never left partial, and a full disk, an I/O error or
    Ctrl-C leaves it as it was, the temp file removed. mode "x" refuses an existing path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same directory: the rename is atomic
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            for text in texts:
                f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the file
        if mode == "x" and path.exists():
            raise FileExistsError(errno.EEXIST, "File exists", str(path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def why_not_written(error):
    """An OSError as a message ends: a full disk worded as docs/operations.md words it for checkpoints."""
    return "no space left on the device" if error.errno == errno.ENOSPC else error.strerror or str(error)


def download(name):
    """Save the Hub dataset `name` (every split) under $NANOIRL_DATA, where --data name finds it.
    Saved into a temp directory that is renamed at the end: a failure leaves no partial dataset."""
    if not hub_offline() and (offline := reachable()):  # datasets would retry ~30 s, then a traceback
        raise DataError(f"cannot download {name}: {offline}")
    import datasets
    datasets.logging.set_verbosity_error()
    path = data_dir() / name
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        datasets.load_dataset(name).save_to_disk(str(tmp))
        shutil.rmtree(path, ignore_errors=True)  # an earlier download of it
        os.replace(tmp, path)
    except Exception as e:  # no such dataset, a full disk, ...
        why = why_not_written(e) if isinstance(e, OSError) and e.errno else (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot download {name} to {path}: {why}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def main(argv=None):
    # python -m nanoirl.data fake_tldr.jsonl --n 256 [--preferences] [--force]
    # python -m nanoirl.data --download vwxyzjn/summarize_from_feedback_tldr_3_filtered
    from nanoirl.run import HelpFormatter, positive_int, seed_arg
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
