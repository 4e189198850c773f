"""
Demonstrations sampled from a (stronger) policy, as MLIRL Sec. 6.1 makes them (10,000 TL;DR
summaries of a 6.9B PPO policy), optionally scored by a gold reward model:

    python -m nanoirl.generate --model <policy> --data <prompts> --n 10000 --out demos.jsonl
    python -m nanoirl.generate ... --gold-model <reward model>   # + gold reward, win rate

--data is read as by the training scripts (TL;DR posts cut to fit --max-prompt-len); the first
--n prompts are used. Each output line is {"prompt", "response"} (readable as --data by the
three scripts) plus "eos" (whether the sample ended; one that did not is truncated) and, with
--gold-model, "gold_reward", "gold_reward_data" (the dataset's own response) and "win".

Resumable: batch i is sampled with a generator seeded by (seed, i) alone, so the file is a pure
function of its line numbers; every batch is written in whole lines and flushed (a full disk or a
Ctrl-C mid-write cuts the file back to its last whole line), and a restarted run drops a cut last
line and continues from the first missing line (re-sampling that batch and skipping what it
already wrote): a killed and restarted run ends with the bytes of an uninterrupted one.
--out is generate's own: its flags are kept beside it in OUT.config.json, and an existing file
without them (or with other flags, or with a line generate did not write) is refused unless --force.
Responses are sampled with the KV cache at --temperature (0.7 as in the TL;DR code), at least
one token before EOS (an empty demonstration is not one).
"""
import sys
if __name__ == "__main__":
    import nanoirl.entry  # noqa: F401  (first: a Ctrl-C while torch is imported ends in one line)
import argparse
import json
import os
import time
from pathlib import Path

import torch

from nanoirl import cli, data, files, mlirl, run
from nanoirl.checkpoint import load_model
from nanoirl.model import GPT
from nanoirl.policy import ends_with_eos
from nanoirl.cli import RunError
from nanoirl.task import check_temperature, load_gold_model, load_tokenizer

parser = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
parser.add_argument("--model", type=cli.model_arg, required=True, help="the policy that writes the demonstrations")
parser.add_argument("--data", type=cli.data_arg, default=data.TLDR_SFT + ":train",
                    help="prompts: any --data source of the scripts (default: TL;DR's train split)")
parser.add_argument("--n", type=cli.positive_int, default=10000, help="demonstrations: the first n prompts")
parser.add_argument("--out", required=True, help="output JSONL; an existing one of generate's is continued")
parser.add_argument("--force", action="store_true", help="overwrite an --out that generate did not write, or wrote with other flags")
parser.add_argument("--batch-size", type=cli.positive_int, default=64, help="prompts per sampling batch")
parser.add_argument("--temperature", type=cli.nonnegative_float, default=0.7, help="sampling temperature (0: greedy)")
parser.add_argument("--max-prompt-len", type=cli.positive_int, default=512, help="prompt tokens (left-padded)")
parser.add_argument("--max-response-len", type=cli.positive_int, default=53, help="new tokens, EOS included")
parser.add_argument("--gold-model", default=None, help="a reward model that scores each sample and the data's response")
parser.add_argument("--seed", type=cli.seed_arg, default=1, help="batch i is sampled with seed * 1_000_003 + i")
parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto")
parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float64", "bfloat16"],
                    help="weights and compute; auto: bfloat16 on CUDA, float32 on CPU")


def check_out(out, meta, flags, force):
    """The number of whole lines of generate's own --out to continue from (0 for a new one), or
    RunError, before anything is written: --out must be a file in an existing directory, and an
    existing one (unless --force) must have its flags beside it (meta), the same flags, and
    generate's lines."""
    if out.is_dir():
        raise RunError(f"--out {out} is a directory; give the path of a JSONL file")
    if not out.parent.is_dir():
        raise RunError(f"--out {out}: no such directory {out.parent}")
    if force or not out.exists():
        return 0
    again = "use another --out, or --force to overwrite it"
    if not meta.exists():
        raise RunError(f"--out {out} exists and was not written by nanoirl.generate (no {meta.name} beside it); {again}")
    try:
        written = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else getattr(e, "msg", None) or type(e).__name__
        raise RunError(f"{meta}: damaged ({why}); {again}") from None
    if written != flags:
        raise RunError(f"--out {out} was written with other flags ({meta}); {again}")
    raw = out.read_bytes()
    lines = raw[:raw.rfind(b"\n") + 1].splitlines()  # whole lines (a cut last one is dropped later)
    for n, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RunError(f"{out}:{n}: damaged ({getattr(e, 'msg', 'not UTF-8')}); {again}") from None
        if not isinstance(row, dict) or not {"prompt", "response", "eos"} <= row.keys():
            raise RunError(f"{out}:{n}: not a line of nanoirl.generate; {again}")
    return len(lines)


def append_whole(out, text, size):
    """Append text (whole lines) to out, which has `size` bytes; on any failure (a full disk, an
    I/O error, Ctrl-C mid-write) cut it back to those bytes, so that it holds whole lines only."""
    raw = left = text.encode("utf-8")
    try:
        with open(out, "ab", buffering=0) as f:  # unbuffered: every byte written is accounted for
            while left:
                left = left[f.write(left):]
    except BaseException:
        os.truncate(out, size)
        raise
    return size + len(raw)


def main(args):
    check_temperature("temperature", args.temperature, greedy=True)
    device, dtype = cli.device_and_dtype(args)
    out, meta = Path(args.out), Path(args.out + ".config.json")
    flags = {k: v for k, v in vars(args).items() if k not in ("out", "force")}
    done = check_out(out, meta, flags, args.force)
    n, ours = args.n, False  # ours: out is this run's file now (its flags written beside it)
    kept = lambda: (f"{out} holds {done} of {n} demonstrations, whole lines: run the same command again to continue"
                    if done or ours else f"nothing was written to {out}")
    try:
        tok, _ = load_tokenizer(args.model)
        examples = data.load_demonstrations(args.data)[:args.n]
        d = data.tokenize(examples, tok, args.max_prompt_len, args.max_response_len, max_truncated_share=1.0)
        n, bs = len(examples), args.batch_size
        if done > n:
            raise RunError(f"--out {out} has {done} lines, more than the {n} prompts of --data; "
                           "use another --out, or --force to overwrite it")
        try:
            policy = load_model(GPT, args.model, dtype, device).eval()
            gold = args.gold_model and load_gold_model(args.gold_model, device, dtype).eval()
        except (FileNotFoundError, ValueError) as e:
            raise RunError(str(e).splitlines()[0]) from None
        try:  # each whole or not at all
            files.write_atomically(meta, [json.dumps(flags, indent=2) + "\n"])
            if args.force or not out.exists():
                files.write_atomically(out, [])  # (--force replaces an old file only now)
        except OSError as e:
            raise RunError(f"cannot write --out {out}: {files.why_not_written(e)}; {kept()}") from None
        ours = True
        size = out.read_bytes().rfind(b"\n") + 1
        os.truncate(out, size)  # a cut last line (a kill during a write) is cut off the file
        cfg = mlirl.MLIRLConfig(eos_id=tok.eos_id, pad_id=tok.pad_id)
        t0, start = time.time(), done
        with torch.no_grad():
            for b in range(done // bs, -(-n // bs)) if done < n else []:  # (a finished file: nothing to do)
                i = slice(b * bs, min((b + 1) * bs, n))
                p, m = d["prompts"][i].to(device), d["prompt_mask"][i].to(device)
                g = torch.Generator(device).manual_seed(args.seed * 1_000_003 + b)
                y, _ = policy.sample(p, m, args.max_response_len, tok.eos_id, tok.pad_id, args.temperature,
                                     min_new_tokens=1, generator=g)
                ended = ends_with_eos(y, tok.eos_id).tolist()
                if gold:
                    g_y = mlirl.sequence_rewards(gold, p, m, y, cfg).float().tolist()
                    g_d = mlirl.sequence_rewards(gold, p, m, d["responses"][i].to(device), cfg).float().tolist()
                lines = []
                for j in range(len(y)):
                    if b * bs + j < done:
                        continue  # written before the restart
                    ids = [t for t in y[j].tolist() if t not in (tok.eos_id, tok.pad_id)]  # pad only after EOS
                    line = {"prompt": tok.decode(p[j][m[j]].tolist()), "response": tok.decode(ids),
                            "eos": ended[j]}
                    if gold:
                        line.update(gold_reward=g_y[j], gold_reward_data=g_d[j], win=g_y[j] > g_d[j])
                    lines.append(json.dumps(line) + "\n")
                try:
                    size = append_whole(out, "".join(lines), size)
                except OSError as e:
                    raise RunError(f"cannot write {out}: {files.why_not_written(e)}; {kept()}") from None
                done = i.stop
                rate = (time.time() - t0) / (done - start)
                hms = lambda s: time.strftime("%H:%M:%S", time.gmtime(s))
                print(f"generate {done}/{n} | {hms(time.time() - t0)} | eta {hms(rate * (n - done))}", flush=True)
    except KeyboardInterrupt:  # exit status 130 = 128 + SIGINT, as a shell reports a Ctrl-C
        print(f"error: interrupted; {kept()}", file=sys.stderr)
        sys.exit(130)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    summary = f"{len(rows)} demonstrations in {out}; {sum(r['eos'] for r in rows)} end with EOS"
    if gold:
        mean = lambda k: sum(r[k] for r in rows) / len(rows)
        summary += (f"; gold_reward {mean('gold_reward'):.4g} (the data's responses {mean('gold_reward_data'):.4g}), "
                    f"win_rate {mean('win'):.4g}")
    print(summary)


if __name__ == "__main__":
    with run.script():  # one-line errors, SIGTERM as Ctrl-C, the process group ended on every way out
        main(parser.parse_args())
