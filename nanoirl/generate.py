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
function of its line numbers; every line is written whole and flushed, and a restarted run drops
a cut last line and continues from the first missing line (re-sampling that batch and skipping
what it already wrote): a killed and restarted run ends with the bytes of an uninterrupted one.
Responses are sampled with the KV cache at --temperature (0.7 as in the TL;DR code), at least
one token before EOS (an empty demonstration is not one).
"""
import argparse
import json
import time
from pathlib import Path

import torch

from nanoirl import data, mlirl, run
from nanoirl.model import GPT
from nanoirl.policy import ends_with_eos
from nanoirl.task import load_gold_model, load_tokenizer

parser = argparse.ArgumentParser(description=__doc__, formatter_class=run.HelpFormatter)
parser.add_argument("--model", type=run.model_arg, required=True, help="the policy that writes the demonstrations")
parser.add_argument("--data", type=run.data_arg, default=data.TLDR_SFT + ":train",
                    help="prompts: any --data source of the scripts (default: TL;DR's train split)")
parser.add_argument("--n", type=run.positive_int, default=10000, help="demonstrations: the first n prompts")
parser.add_argument("--out", required=True, help="output JSONL; an existing one is continued")
parser.add_argument("--batch-size", type=run.positive_int, default=64, help="prompts per sampling batch")
parser.add_argument("--temperature", type=run.nonnegative_float, default=0.7, help="sampling temperature (0: greedy)")
parser.add_argument("--max-prompt-len", type=run.positive_int, default=512, help="prompt tokens (left-padded)")
parser.add_argument("--max-response-len", type=run.positive_int, default=53, help="new tokens, EOS included")
parser.add_argument("--gold-model", default=None, help="a reward model that scores each sample and the data's response")
parser.add_argument("--seed", type=run.seed_arg, default=1, help="batch i is sampled with seed * 1_000_003 + i")
parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto")
parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float64", "bfloat16"],
                    help="weights and compute; auto: bfloat16 on CUDA, float32 on CPU")


def complete_lines(path):
    """Lines already written whole; a cut last line (a kill during a write) is cut off the file."""
    if not path.exists():
        return 0
    raw = path.read_bytes()
    whole = raw[:raw.rfind(b"\n") + 1]
    if len(whole) != len(raw):
        with open(path, "r+b") as f:
            f.truncate(len(whole))
    return whole.count(b"\n")


def main(args):
    device, dtype = run.device_and_dtype(args)
    out, meta = Path(args.out), Path(args.out + ".config.json")
    flags = {k: v for k, v in vars(args).items() if k != "out"}
    if out.exists() and meta.exists() and json.loads(meta.read_text()) != flags:
        raise run.RunError(f"--out {out} was written with other flags ({meta}); use another --out")
    tok, _ = load_tokenizer(args.model)
    examples = data.load_demonstrations(args.data)[:args.n]
    d = data.tokenize(examples, tok, args.max_prompt_len, args.max_response_len, max_truncated_share=1.0)
    try:
        policy = GPT.from_pretrained(args.model, dtype, device).eval()
        gold = args.gold_model and load_gold_model(args.gold_model, device, dtype).eval()
    except (FileNotFoundError, ValueError) as e:
        raise run.RunError(str(e).splitlines()[0]) from None
    meta.write_text(json.dumps(flags, indent=2) + "\n")
    n, bs = len(examples), args.batch_size
    done = complete_lines(out)
    cfg = mlirl.MLIRLConfig(eos_id=tok.eos_id, pad_id=tok.pad_id)
    t0, start = time.time(), done
    with open(out, "a", encoding="utf-8") as f, torch.no_grad():
        for b in range(done // bs, -(-n // bs)):
            i = slice(b * bs, min((b + 1) * bs, n))
            p, m = d["prompts"][i].to(device), d["prompt_mask"][i].to(device)
            g = torch.Generator(device).manual_seed(args.seed * 1_000_003 + b)
            y, _ = policy.sample(p, m, args.max_response_len, tok.eos_id, tok.pad_id, args.temperature,
                                 min_new_tokens=1, generator=g)
            ended = ends_with_eos(y, tok.eos_id).tolist()
            if gold:
                g_y = mlirl.sequence_rewards(gold, p, m, y, cfg).float().tolist()
                g_d = mlirl.sequence_rewards(gold, p, m, d["responses"][i].to(device), cfg).float().tolist()
            for j in range(len(y)):
                if b * bs + j < done:
                    continue  # written before the restart
                ids = [t for t in y[j].tolist() if t not in (tok.eos_id, tok.pad_id)]
                line = {"prompt": tok.decode(p[j][m[j]].tolist()), "response": tok.decode(ids),
                        "eos": ended[j]}
                if gold:
                    line.update(gold_reward=g_y[j], gold_reward_data=g_d[j], win=g_y[j] > g_d[j])
                f.write(json.dumps(line) + "\n")
            f.flush()
            done = i.stop
            rate = (time.time() - t0) / (done - start)
            hms = lambda s: time.strftime("%H:%M:%S", time.gmtime(s))
            print(f"generate {done}/{n} | {hms(time.time() - t0)} | eta {hms(rate * (n - done))}", flush=True)
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
