"""
The toy MDP as text, so that the text path (nanoirl/task.py: TextTask, a GPT-NeoX behind a
tokenizer) is checked against the toy's exact expert too.

  write     the toy's prompts, demonstrations and gold-preference pairs as the JSONL files the
            text scripts read (--data, --eval-pairs); each prompt a short string ("0:" for prompt
            0), each response its letters ("abca"); the text path appends EOS as for any data
  evaluate  a text policy exactly: every toy response of every prompt, tokenised as the text path
            tokenises data (nanoirl/data.py:tokenize, EOS appended, cut at --max-response-len),
            scored by the policy's own logprobs; reported on the toy language renormalised, with
            the mass the policy puts on every other token sequence (outside_language)

    python -m toy.text write out/toy-text --demos 60 --seed 1
    python train_sft.py --model random:pythia-70m --toy-eval out/toy-text --max-prompt-len 2 --max-response-len 5 --eval-size 3
    (pythia-70m on a CPU: seconds a step; toy_vs_text.py trains a GPT-NeoX of the toy GPT's size, on
    the three scripts, against the toy path: docs/results.md)

With UTF-8 bytes as tokens (the random-init dry run's tokenizer) a letter is one token, and
--max-response-len 5 (the toy's horizon T) cuts the toy's T-letter responses where the toy
truncates them: the text path's responses are then exactly the toy's, plus any sequence that
holds another token. With Pythia's BPE tokenizer "abca" is fewer tokens than letters, so the
T-letter responses end with EOS on text; the toy language is still the same strings.

DIR holds demos.jsonl (--held-out demonstrations first, which TextTask holds out by --eval-size,
then the --demos demonstrations that `--n-demos N --seed S` gives the toy path, in the same order),
pairs.jsonl and toy.json (what the evaluation needs to rebuild the MDP).
"""
if __name__ == "__main__":
    import nanoirl.entry  # noqa: F401  (first: a Ctrl-C while torch is imported ends in one line)
import argparse
import contextlib
import dataclasses
import io
import json
from pathlib import Path

import torch

from nanoirl import cli, data, dist
from nanoirl.cli import RunError
from nanoirl.files import why_not_written, write_atomically
from nanoirl.policy import ends_with_eos, sequence_logprob
from nanoirl.task import TextTask, in_chunks
from toy import metrics
from toy.mdp import ToyConfig, ToyMDP

PROMPT = "{x}:"  # prompt x of the toy; short, for the text path pads every prompt to --max-prompt-len


def response_text(mdp, tokens):
    """A toy response (T,) as its letters: EOS and pad dropped ("abca")."""
    return "".join(mdp.letter(int(t) - 2) for t in tokens if int(t) >= 2)


def records(mdp, prompts, responses, prompt=PROMPT):
    """(prompts (B, 1), responses (B, T)) of the toy -> [{"prompt", "response"}]."""
    x = mdp.prompt_index(prompts).tolist()
    return [{"prompt": prompt.format(x=i), "response": response_text(mdp, y)} for i, y in zip(x, responses)]


def gold_pairs(mdp, n, generator):
    """Up to n {"prompt", "chosen", "rejected"} pairs, prompts in turn: y and y' drawn independently
    from half expert, half uniform (the law of toy/metrics.py:pair_accuracy), the one with the higher
    gold reward chosen. Ties are left out, and so are pairs with an empty response (EOS alone), which
    the text loader refuses."""
    x = torch.arange(n) % mdp.n_prompts
    mix = (0.5 * mdp.expert_logprob.exp() + 0.5 / len(mdp.responses)).log()
    y, y2 = mdp.sample(mix, x, generator), mdp.sample(mix, x, generator)
    g = mdp.gold_reward()
    out = []
    for i, a, b in zip(x.tolist(), y, y2):
        ga, gb = g[i, mdp.index[tuple(a.tolist())]], g[i, mdp.index[tuple(b.tolist())]]
        ta, tb = response_text(mdp, a), response_text(mdp, b)
        if ga != gb and ta and tb:
            chosen, rejected = (ta, tb) if ga > gb else (tb, ta)
            out.append({"prompt": PROMPT.format(x=i), "chosen": chosen, "rejected": rejected})
    return out


def write(directory, n_demos, seed, held_out=3, n_pairs=256, style=0.0):
    """Write demos.jsonl, pairs.jsonl and toy.json under directory (each file whole: nanoirl/files.py).
    The training demonstrations are ToyTask's for --n-demos n_demos --seed seed; the held-out ones
    and the pairs come from generators of their own."""
    mdp = ToyMDP(ToyConfig(style=style))
    # k = 0: ToyTask's generator; the others of their own (torch keeps a seed's low 32 bits)
    g = lambda k: torch.Generator().manual_seed(seed if k == 0 else (seed * 1_000_003 + k) % 2 ** 32)
    train = mdp.demonstrations(n_demos, g(0))
    held = mdp.demonstrations(held_out, g(1))
    demos = records(mdp, held[0], held[2]) + records(mdp, train[0], train[2])
    if any(not r["response"] for r in demos):
        raise RunError(f"seed {seed} draws an empty demonstration (EOS alone, expert mass "
                       f"{mdp.expert_logprob[0, 0].exp():.1e}), which the text loader refuses: use another seed")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data.write_jsonl(directory / "demos.jsonl", demos)
    data.write_jsonl(directory / "pairs.jsonl", gold_pairs(mdp, n_pairs, g(2)))
    meta = {"toy": dataclasses.asdict(mdp.cfg), "n_demos": n_demos, "seed": seed, "held_out": held_out,
            "prompt": PROMPT}
    write_atomically(directory / "toy.json", [json.dumps(meta, indent=1) + "\n"])
    return mdp, train


class ToyLanguage:
    """Every toy response of every prompt as the text path's tokens, and a text policy's exact law on them."""

    def __init__(self, meta, tok, max_prompt_len, max_response_len):
        self.mdp = mdp = ToyMDP(ToyConfig(**meta["toy"]))
        prompts, _, responses = mdp.all_pairs()
        examples = [{**r, "where": "the toy language"} for r in records(mdp, prompts, responses, meta["prompt"])]
        # max_truncated_share 1: the toy's T-letter responses are meant to be cut (truncated), and
        # tokenize's count of them is no news here
        with contextlib.redirect_stdout(io.StringIO()):
            t = data.tokenize(examples, tok, max_prompt_len, max_response_len, max_truncated_share=1.0)
        self.prompts, self.prompt_mask, self.responses = t["prompts"], t["prompt_mask"], t["responses"]
        self.eos_id, self.pad_id = tok.eos_id, tok.pad_id
        ended = ends_with_eos(self.responses, tok.eos_id).view(mdp.n_prompts, -1)
        short = (mdp.responses == mdp.eos_id).any(-1)  # the toy's responses that end with EOS
        if not ended[:, short].all():  # a cut EOS would make "abc" a prefix of "abca": masses overlap
            raise RunError(f"--max-response-len {max_response_len} cuts the EOS of toy responses shorter than "
                           f"the horizon {mdp.T}; give at least the tokens of {mdp.T - 1} letters and EOS")
        # demonstrations of the toy path (ToyTask with --n-demos, --seed): fkl_demos and win rate against them
        demos = mdp.demonstrations(meta["n_demos"], torch.Generator().manual_seed(meta["seed"]))
        self.demo_logd = mdp.empirical_logprob(demos[0], demos[2])

    def tokens(self):
        """The token ids of the toy language: EOS and every token of a toy response (with bytes as
        tokens, the letters; a BPE tokenizer may add merged tokens such as "ab")."""
        ids = self.responses.unique()
        return ids[ids != self.pad_id].tolist()

    @torch.no_grad()
    def logd(self, policy, batch_size, temperature=1.0):
        """log d(y|x) of every toy response (n_prompts, N), float64, unnormalised, as the policy's own
        logprobs give it at the temperature."""
        def seq(p, m, y):
            return sequence_logprob(policy.logprobs(p, m, y, temperature).double(), y, self.eos_id)
        dev = next(policy.parameters()).device
        rows = (self.prompts.to(dev), self.prompt_mask.to(dev), self.responses.to(dev))
        return in_chunks(seq, batch_size, *rows).cpu().view(self.mdp.n_prompts, -1)

    def evaluate(self, policy, batch_size, temperature=1.0):
        """The toy's exact metrics (toy/metrics.py:summary, win rate) on the renormalised law, plus
        outside_language = 1 - the policy's mass on the toy language, per prompt, averaged. At the
        temperature the policy is sampled at (logged as eval_temperature)."""
        logd = self.logd(policy, batch_size, temperature)
        inside = logd.logsumexp(-1, keepdim=True)
        logd = logd - inside
        return {**metrics.summary(self.mdp, logd, self.demo_logd),
                "win_rate": metrics.win_rate(self.mdp, logd, self.demo_logd).mean().item(),
                "outside_language": (1 - inside.exp()).mean().item(), "eval_temperature": temperature}


def read_meta(directory):
    path = Path(directory) / "toy.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"--toy-eval {directory}: cannot read {path} ({e}); write it with "
                       f"python -m toy.text write {directory}") from None


class ToyTextTask(TextTask):
    """TextTask on the toy as text (--toy-eval DIR), as close to ToyTask as text allows: --data and
    --eval-pairs default to DIR's files; the scripts' defaults are the toy GPT's (nanoirl/cli.py:
    setting); a response cut at --max-response-len is a toy response of T letters, so it is kept
    (--truncate-long-responses) and PPO does not penalise it (missing_eos_penalty None); with
    --toy-tokens-only the policy samples only toy tokens, as the toy GPT does; and evaluate() is the
    exact evaluation above in place of the sampled text metrics."""

    def __init__(self, args, device, dtype, default_pairs=None):
        meta = read_meta(args.toy_eval)
        if args.data is None:
            args.data = str(Path(args.toy_eval) / "demos.jsonl")
            args.eval_pairs = args.eval_pairs or str(Path(args.toy_eval) / "pairs.jsonl")
        if args.eval_size != meta["held_out"]:
            raise RunError(f"--toy-eval {args.toy_eval}: its demos.jsonl begins with {meta['held_out']} held-out "
                           f"demonstrations; pass --eval-size {meta['held_out']} (now {args.eval_size}) so that "
                           f"the text path trains on the toy path's {meta['n_demos']}")
        args.truncate_long_responses = True  # the toy's T-letter responses are truncated by design
        super().__init__(args, device, dtype)
        self.language = ToyLanguage(meta, self.tok, args.max_prompt_len, args.max_response_len)
        self.missing_eos_penalty = None  # T letters without EOS is a toy response, as on the toy path
        if args.toy_tokens_only:  # EOS and every token of a toy response: the toy GPT's actions, on text
            self.policy.set_allowed_tokens(self.language.tokens())

    def evaluate(self, policy):
        # the law PPO samples and optimises, at its --temperature; SFT's policy as trained, at 1
        temperature = getattr(self.args, "temperature", None) or 1.0
        with dist.full_weights(policy) as model:  # every rank evaluates the whole model
            return self.language.evaluate(model, self.args.forward_batch_size, temperature)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m toy.text", formatter_class=cli.HelpFormatter,
        description="Write the toy MDP as the text scripts' JSONL files: DIR/demos.jsonl (--held-out "
                    "demonstrations, then the --demos that train_sft.py --n-demos N --seed S draws on the toy), "
                    "DIR/pairs.jsonl (gold-preference pairs for --eval-pairs) and DIR/toy.json (for --toy-eval DIR). "
                    "Then: python train_sft.py --model random:pythia-70m --toy-eval DIR --max-prompt-len 2 "
                    "--max-response-len 5 --eval-size 3")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write DIR", formatter_class=cli.HelpFormatter)
    w.add_argument("dir", help="output directory (made if missing; its three files are replaced whole)")
    w.add_argument("--demos", type=cli.positive_int, default=60, help="training demonstrations (the toy path's --n-demos)")
    w.add_argument("--seed", type=cli.seed_arg, default=1, help="the toy path's --seed: the same demonstrations")
    w.add_argument("--held-out", type=cli.positive_int, default=3,
                   help="demonstrations written first, which the text scripts hold out by --eval-size")
    w.add_argument("--pairs", type=cli.positive_int, default=256, help="gold-preference pairs drawn (ties dropped)")
    w.add_argument("--style", type=float, default=0.0,
                   help="the demonstrator's habit: the expert tilted by exp(style * number of a's) (toy/mdp.py); "
                        "the toy path's scripts have no such flag, so its runs compare only at 0")
    args = parser.parse_args(argv)
    try:
        write(args.dir, args.demos, args.seed, args.held_out, args.pairs, args.style)
    except RunError as e:
        parser.error(str(e))
    except OSError as e:
        parser.error(f"cannot write {args.dir}: {why_not_written(e)}")
    print(f"wrote {args.held_out} + {args.demos} demonstrations, pairs and toy.json to {args.dir}")


if __name__ == "__main__":
    main()
