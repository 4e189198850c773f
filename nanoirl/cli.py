"""
The command line every script shares: the flags of the three scripts and their argparse types
(each checks its range at parse time, so a bad value stops the script before anything is
written), the --help layout, and --device/--dtype as a torch device and dtype. A problem found
later with a flag, the run directory or the training itself is a RunError: one line, no
traceback (nanoirl/run.py:script prints it).

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    cli.add_common_args(parser, out="out/sft")
    g.add_argument("--steps", type=cli.positive_int, default=300)
    device, dtype = cli.device_and_dtype(args)
"""
import argparse
import math
import os
import random
import re
import stat

import numpy as np
import torch

from nanoirl import dist

MODEL_FORMS = ("toy-tabular, toy-gpt, pythia-{70m,160m,410m,1b,1.4b,2.8b,6.9b,12b}[-deduped], a Hub id "
               "owner/name, random:pythia-<size> (random init, for dry runs), "
               "or an existing local checkpoint path")


class RunError(RuntimeError):
    """A problem with a flag, the run directory or the training itself; its message is one line."""


def model_arg(value):
    """argparse type of --model: the toy, a random config, an existing path, or a name that
    nanoirl.hub can look up (a Pythia name or a Hub id); whether it is cached is checked later."""
    from nanoirl.hub import PYTHIA, repo_id
    if value in ("toy-tabular", "toy-gpt") or os.path.exists(value):
        return value
    if value.startswith("random:") and value[len("random:"):] in PYTHIA:
        return value
    try:
        return repo_id(value) and value  # raises ValueError for anything else, random:<unknown> too
    except ValueError:
        raise argparse.ArgumentTypeError(f"unknown model {value!r}; use {MODEL_FORMS}") from None


def file_arg(value):
    """An existing regular file (a directory or a FIFO is named as what it is)."""
    try:
        mode = os.stat(value).st_mode
    except FileNotFoundError:
        raise argparse.ArgumentTypeError(f"no such file: {value}") from None
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {value}: {e.strerror}") from None
    if stat.S_ISDIR(mode):
        raise argparse.ArgumentTypeError(f"{value} is a directory, not a JSONL file")
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "not a regular file"
        raise argparse.ArgumentTypeError(f"{value} is {kind}; give a regular file (it is read once per run "
                                         "and again on --resume)")
    return value


def data_arg(value):
    """argparse type of --data: an existing file (regular, not a FIFO) or directory (":split"
    allowed after a dataset directory), or what looks like a Hub dataset owner/name[:split]
    (looked up later)."""
    name = value.split(":")[0] if not os.path.exists(value) else value
    if os.path.isdir(name) or re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", name) and not os.path.exists(name):
        return value
    return file_arg(name) and value


# The types of numeric flags: each checks its range at parse time, so that argparse prints
# 'error: argument --flag: ...' and exits before anything is written.
def _number(value, kind):
    try:
        return kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {value!r}") from None


def positive_int(value):
    n = _number(value, int)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def nonnegative_int(value):
    n = _number(value, int)
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return n


def seed_arg(value):
    n = _number(value, int)
    if not 0 <= n < 2 ** 32:  # numpy's seeds
        raise argparse.ArgumentTypeError(f"expected a seed in 0 ... 2**32 - 1, got {value!r}")
    return n


def positive_float(value):
    x = _number(value, float)
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value!r}")
    return x


def nonnegative_float(value):
    x = _number(value, float)
    if not (math.isfinite(x) and x >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value!r}")
    return x


def learning_rate(value):
    """> 0; inf is allowed: every weight becomes non-finite after one step, and the NaN guard
    stops the run with one line (how the tests reach that guard)."""
    x = _number(value, float)
    if not x > 0:  # nan compares false
        raise argparse.ArgumentTypeError(f"expected a learning rate > 0, got {value!r}")
    return x


def check_minibatches(num_minibatches, rollout_batch_size):
    """PPO cuts each rollout into --num-minibatches equal minibatches: checked once the per-model
    defaults are filled in, before --out is touched."""
    if rollout_batch_size % num_minibatches:
        raise RunError(f"--num-minibatches {num_minibatches} must divide --rollout-batch-size "
                       f"{rollout_batch_size} (PPO cuts each rollout into equal minibatches)")


def int_list(check, multiple_of=1):
    """argparse type of a comma-separated list of integers, each passed through `check` (e.g.
    positive_int) and a multiple of `multiple_of`."""
    def parse(value):
        items = [check(v.strip()) for v in value.split(",")]
        if any(n % multiple_of for n in items):
            raise argparse.ArgumentTypeError(f"expected multiples of {multiple_of}, got {value!r}")
        return items
    return parse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The script's docstring as written, and '(default: X)' after every flag whose help does not
    already say its default (a default of None is picked per model: the help says how)."""
    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


# ---- the defaults that depend on the setting ------------------------------------------------------
# Each script opens with DEFAULTS, a table of {flag: (toy table, toy GPT, text)}: the values a flag
# left unset takes for --model toy-tabular, toy-gpt, and any text model. A text model on the toy's
# data (--toy-eval, toy/text.py) takes the toy GPT's: the same data, the same settings.
SETTINGS = ("toy table", "toy GPT or --toy-eval", "text")


def setting(args):
    """The column of DEFAULTS that args picks: 0 the toy table, 1 the toy GPT (or a text model on
    the toy's data, --toy-eval), 2 text."""
    return {"toy-tabular": 0, "toy-gpt": 1}.get(args.model, 1 if getattr(args, "toy_eval", None) else 2)


def show_defaults(parser, defaults):
    """Add '(default: 0.1 toy table, 0.003 toy GPT or --toy-eval, 1e-05 text)' to the --help of every flag of
    `defaults`, read from the table itself. Those flags default to None until fill_defaults."""
    for action in parser._actions:
        if action.dest in defaults:
            assert action.default is None, f"--{action.dest} has a default of its own"
            shown = ", ".join(f"{'none' if v is None else v} {name}" for v, name in zip(defaults[action.dest], SETTINGS))
            action.help = f"{action.help} (default: {shown})"


def fill_defaults(args, defaults):
    """Set every flag of `defaults` that the command line left unset to its value for --model's
    setting, so that config.json records, and --resume compares, the values the run uses."""
    for name, values in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, values[setting(args)])
    return args


def add_common_args(parser, **defaults):
    """Add the flags of all three scripts, in groups; keyword arguments override their defaults
    (e.g. out="out/sft"). Each script adds its algorithm's flags in groups of its own."""
    g = parser.add_argument_group("model and data")
    g.add_argument("--model", type=model_arg, default="toy-tabular", help=f"the policy: {MODEL_FORMS}")
    g.add_argument("--data", type=data_arg, default=None,
                   help='demonstrations: {"prompt", "response"} or the TL;DR layout {"subreddit", "title", '
                        '"post", "summary"}, as a JSONL, parquet or dataset directory, or a Hub dataset '
                        "owner/name[:split]; default: the toy MDP's expert, on text TL;DR "
                        "(vwxyzjn/summarize_from_feedback_tldr_3_filtered)")
    g.add_argument("--max-prompt-len", type=positive_int, default=512,
                   help="prompts are left-padded to this many tokens; a longer one is an error (TL;DR: 512)")
    g.add_argument("--max-response-len", type=positive_int, default=53,
                   help="responses, EOS included, are right-padded or truncated to this many tokens (TL;DR: 53)")
    g = parser.add_argument_group("run directory")
    g.add_argument("--out", default="out", help="run directory: config.json, metrics.jsonl, metrics.png, ckpt.pt")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--resume", action="store_true", help="continue the run in --out from its ckpt.pt")
    x.add_argument("--force", action="store_true",
                   help="start over in an --out that already holds files (replaces its run files)")
    g.add_argument("--ckpt-every", type=positive_int, default=100,
                   help="write the checkpoint every this many steps, and at the end")
    g.add_argument("--log-every", type=positive_int, default=1,
                   help="print a line every this many steps (metrics.jsonl gets every step)")
    g = parser.add_argument_group("system")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto: cuda when available")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float64", "bfloat16"],
                   help="compute dtype; auto: bfloat16 on CUDA, float32 on CPU")
    g.add_argument("--seed", type=seed_arg, default=1, help="seed of every random number generator")
    g.add_argument("--micro-batch-size", type=positive_int, default=None,
                   help="sequences (reward model: pairs) per forward/backward of every training step, on each rank; "
                        "gradients accumulate to the whole batch's (none: the whole batch)")
    g.add_argument("--grad-checkpoint", action="store_true",
                   help="GPT models recompute each layer's activations in backward: less memory, the "
                        "same numbers, about a third more compute (pythia-1b PPO within 40 GB)")
    g.add_argument("--forward-batch-size", type=positive_int, default=64,
                   help="sequences per no-grad chunk of sampling and scoring (rollouts, ML-IRL's pairs), global: "
                        "under torchrun each rank takes its share of every chunk, so give 64 x ranks to "
                        "sample 64 per GPU; one process with the same value samples the same responses")
    g.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the trained models (and the frozen reference) over the ranks "
                        "with FSDP2, per transformer layer, instead of replicating them with DDP (README: "
                        "past one GPU)")
    parser.set_defaults(**defaults)


def device_and_dtype(args):
    """(torch.device, torch.dtype) from --device and --dtype. Under torchrun it also starts the
    process group (nanoirl/dist.py), and each rank takes the GPU of its local rank."""
    name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RunError(f"--device {name}: not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):  # mps, meta, xpu...: not what nanoirl runs and tests on
        raise RunError(f"--device {name}: not supported; use cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise RunError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices")
    if getattr(args, "fsdp", False) and "RANK" not in os.environ:
        raise RunError("--fsdp shards the models over the ranks of torchrun: launch with "
                       "torchrun --nproc_per_node N (README: past one GPU)")
    if getattr(args, "fsdp", False) and not dist.has_fsdp2():
        raise RunError(f"--fsdp needs torch >= {dist.FSDP2_TORCH} (FSDP2); this is torch {torch.__version__}")
    try:
        local = dist.init(device.type)
    except ValueError as e:  # a bad NANOIRL_DIST_TIMEOUT
        raise RunError(str(e)) from None
    if device.type == "cuda" and dist.world() > 1:
        device = torch.device("cuda", local)
    dtype = args.dtype if args.dtype != "auto" else "bfloat16" if device.type == "cuda" else "float32"
    return device, getattr(torch, dtype)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # CPU and every CUDA device
