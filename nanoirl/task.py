"""
What a script trains on, behind one small interface, so that train_sft.py, train_airl.py and
train_mlirl.py read the same whether --model names the toy MDP or a Pythia. TextTask here is
text; the toy's task is toy/task.py's ToyTask (nanoirl/ never imports toy/): the script picks one
by --model and load_task builds it.

  task = load_task(task_for(args), args, device, dtype)
                              task_for (toy/task.py): ToyTask on --model toy-*, else TextTask, or
                              with --toy-eval toy/text.py's ToyTextTask
  task.policy                 the policy to train (nanoirl/policy.py interface)
  task.demos                  (prompts, prompt_mask, responses): the training demonstrations
  task.eos_id, task.pad_id    token ids; task.response_len: tokens per sampled response
  task.missing_eos_penalty    PPO's score for a sampled response cut at response_len (ppo.py,
                              detail 3): -1 on text; None (no penalty) on the toy and the toy as
                              text, where a response of T letters ends at the horizon, as the
                              expert's and the demonstrations' do
  task.autocast()             bf16 autocast with --dtype bfloat16 (text), else nothing: weights
                              stay fp32 (at lr 3e-6 a bf16 weight cannot absorb most updates)
  task.autocast_dtype         "bfloat16" then, else None: for PPOConfig and MLIRLConfig
  task.new_scalar()           a reward / value / discriminator model: a fresh table on
                              toy-tabular; the policy's transformer plus a new head on a GPT
                              (TL;DR PPO and MLIRL initialise reward and value models from SFT),
                              or the --reward-init checkpoint on text
  task.evaluate(policy)       exact on the toy (divergences to the expert, gold reward, modes, win
                              rate against the demonstrations); sampled on text at the policy's
                              --temperature, logged as eval_temperature (length, EOS rate; gold
                              reward and win rate against held-out demonstrations with --gold-model)
  task.reward_accuracy(rm)    pair accuracy of a reward model: exact on the toy (pairs labelled by
                              the gold reward), on the --eval-pairs JSONL on text
  task.save(model, dir)       a GPT as a Hugging Face checkpoint; on text with its tokenizer.json,
                              so that the directory works as the next script's --model
"""
import contextlib
import hashlib
import json
import shutil
from pathlib import Path

import torch

from nanoirl import cli, data, dist, hub, mlirl, run
from nanoirl.checkpoint import check_model, load_model, read_bin, safetensors_header
from nanoirl.cli import RunError
from nanoirl.model import GPT, ScalarGPT
from nanoirl.policy import ends_with_eos, sequence_lengths
from nanoirl.reward import accuracy


def add_task_args(parser):
    g = parser.add_argument_group("task")
    g.add_argument("--n-demos", type=cli.positive_int, default=60,
                   help="toy: number of expert demonstrations (the low-demonstration regime matters)")
    g.add_argument("--policy-class", default="full", choices=["full", "position", "markov"],
                   help="toy-tabular: full-prefix table, or a restricted class where forward and "
                        "reverse KL have different optima")
    g.add_argument("--eval-size", type=cli.positive_int, default=64,
                   help="text: demonstrations held out for evaluation")
    g.add_argument("--eval-pairs", default=None,
                   help='text: {"prompt" or "query", "chosen", "rejected"} pairs for reward-model accuracy '
                        "(a JSONL, parquet or dataset directory, or a Hub dataset owner/name[:split]); "
                        f"train_mlirl.py without --data: {data.TLDR_PREFERENCES}:validation[:2048]")
    g.add_argument("--reward-init", default=None,
                   help="text: the initial weights of the reward / value / discriminator models, a causal "
                        "LM (new head) or a reward model (ours or the TL;DR ScalarModel), by name or "
                        "directory; default: the policy's transformer and a new head")
    g.add_argument("--drop-too-long", action="store_true",
                   help="text: drop examples whose prompt (other than a TL;DR post, which is cut) or "
                        "response does not fit, and say how many, instead of stopping")
    g.add_argument("--truncate-long-responses", action="store_true",
                   help="text: keep responses longer than --max-response-len cut short without EOS, "
                        f"whatever their share (otherwise refused above {data.MAX_TRUNCATED_SHARE:.0%}%)")
    g.add_argument("--toy-eval", default=None, metavar="DIR",
                   help="text: the toy MDP as text, written by python -m toy.text write DIR: --data and "
                        "--eval-pairs default to DIR's files, the flags whose defaults depend on --model take the "
                        "toy GPT's, and every evaluation is exact against the toy's expert (every toy response "
                        "through this tokenizer; toy/text.py) in place of the sampled metrics")
    g.add_argument("--toy-tokens-only", action="store_true",
                   help="text, with --toy-eval: mask the policy's logits to EOS and the tokens of the toy's "
                        "responses, as the toy GPT's are masked to its actions (toy/gpt.py), so that it samples "
                        "nothing but toy tokens; the saved policy/ has no mask")
    g.add_argument("--gold-model", default=None,
                   help="text: a reward model with its trained head (ours, e.g. a reward_model/ of "
                        "train_mlirl.py, or the TL;DR ScalarModel; by name or directory) that judges samples: "
                        "gold reward and win rate against the held-out demonstrations")


MIN_TEMPERATURE = 0.01  # logits / 0.01: a change of 0.01 in a logit moves a PPO log-ratio by 1


def check_temperature(flag, t, greedy):
    """A temperature flag's value: a tiny one passes > 0, then is 0 in fp32 (empty EOS-only samples).
    greedy: 0 is allowed, and samples the most likely token."""
    if t is not None and t < MIN_TEMPERATURE and not (greedy and t == 0):
        raise RunError(f"--{flag.replace('_', '-')} {t:g} is below {MIN_TEMPERATURE}: fp32 logits / T "
                       "overflow, and every sample is already the most likely token"
                       + ("; 0 samples greedily" if greedy else ""))


def load_task(Task, args, device, dtype):
    """Task(args, device, dtype): the task a script picked by --model, the toy's (toy/task.py:
    ToyTask) or TextTask below, with the checks and settings common to both around it."""
    for flag, greedy in (("temperature", False), ("sample_temperature", True)):
        check_temperature(flag, getattr(args, flag, None), greedy)
    task = Task(args, device, dtype)
    if args.grad_checkpoint:  # the copies and scalar models made from the policy inherit it
        if not isinstance(task.policy, GPT):
            raise RunError(f"--grad-checkpoint is for GPT models, not --model {args.model}")
        task.policy.gradient_checkpointing = True
    return task


def fingerprint(records):
    """sha256 of loaded records (any source: a file, a dataset directory, the Hub), first 16 hex digits."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r, sort_keys=True, default=str).encode("utf-8", "surrogatepass") + b"\n")
    return h.hexdigest()[:16]


def load_tokenizer(model):
    """(tokenizer, path of its tokenizer.json) of --model. A random-init dry run downloads
    nothing: it takes a cached tokenizer, else UTF-8 bytes as tokens (path None)."""
    from nanoirl.tokenizer import ByteTokenizer, Tokenizer
    name, dry = model.removeprefix("random:"), model.startswith("random:")
    try:
        path = Path(name)  # where it reads tokenizer.json, for TextTask.save to copy
        if not path.exists():
            path = hub.resolve(name, ["tokenizer.json"], download=not dry)  # a model name
        return Tokenizer.from_pretrained(path), path / "tokenizer.json" if path.is_dir() else path
    except (FileNotFoundError, ValueError) as e:
        if not dry:
            raise RunError(f"--model {model}: {e}") from None
        print(f"note: no tokenizer.json of {name} in the Hugging Face cache, so the random-init dry run "
              f"uses UTF-8 bytes as tokens (for Pythia's: huggingface-cli download {hub.repo_id(name)} "
              "tokenizer.json)")
        return ByteTokenizer(), None


class TextTask:
    def __init__(self, args, device, dtype, default_pairs=None):
        eval_data = None
        if args.data is None:  # MLIRL Sec. 6.1: TL;DR, its validation split held out
            args.data, eval_data = data.TLDR_SFT + ":train", data.TLDR_SFT + f":validation[:{args.eval_size}]"
            args.eval_pairs = args.eval_pairs or default_pairs
        self.args, self.device = args, device
        self.autocast_dtype = "bfloat16" if dtype == torch.bfloat16 else None  # fp32 master weights
        self.tok, self.tokenizer_json = load_tokenizer(args.model)
        self.eos_id, self.pad_id, self.response_len = self.tok.eos_id, self.tok.pad_id, args.max_response_len
        self.missing_eos_penalty = -1.0  # TL;DR PPO: a response without EOS is penalised
        examples = data.load_demonstrations(args.data)
        held_out = data.load_demonstrations(eval_data) if eval_data else examples[:args.eval_size]
        # the data's fingerprint goes into config.json and the checkpoint: a --resume on changed
        # contents under the same name is refused like a changed flag (resume.check_resume)
        args.data_sha256 = fingerprint(examples + (held_out if eval_data else []))
        examples = examples if eval_data else examples[args.eval_size:]
        if not examples:
            raise RunError(f"--data {args.data}: {len(held_out)} examples, need more than "
                           f"--eval-size {args.eval_size} (held out for evaluation)")
        share = 1.0 if args.truncate_long_responses else data.MAX_TRUNCATED_SHARE
        tok = lambda ex: data.tokenize(ex, self.tok, args.max_prompt_len, args.max_response_len,
                                       args.drop_too_long, share)
        d, e = tok(examples), tok(held_out)
        self.demos = tuple(d[k].to(device) for k in ("prompts", "prompt_mask", "responses"))
        self.eval = tuple(e[k].to(device) for k in ("prompts", "prompt_mask", "responses"))
        self.pairs = None
        if args.eval_pairs:
            pairs = data.load_preferences(args.eval_pairs)
            args.data_sha256 += " " + fingerprint(pairs)  # --eval-pairs is the run's data too
            p = tok(pairs)
            self.pairs = {k: v.to(device) for k, v in p.items()}
        try:  # fp32 master weights; compute in bf16 under autocast
            weights = torch.float32 if self.autocast_dtype else dtype
            self.policy = load_model(GPT, args.model, dtype=weights, device=device)
        except (FileNotFoundError, ValueError) as e:
            raise RunError(f"--model {args.model}: {e}") from None
        # the gold reward model is never trained: bf16 weights under bf16 autocast (6.9b: 14 GB)
        self.gold = args.gold_model and load_gold_model(args.gold_model, device,
                                                        torch.bfloat16 if self.autocast_dtype else dtype)
        # every model that reads these token ids must have an embedding row for each (checked
        # here, not as an IndexError mid-run); --reward-init is loaded after --out is made: checked now
        models = {"--model": (args.model, self.policy.config),
                  "--gold-model": (args.gold_model, self.gold and self.gold.config)}
        if args.reward_init:
            try:
                models["--reward-init"] = (args.reward_init, check_model(ScalarGPT, args.reward_init))
            except (FileNotFoundError, ValueError) as e:
                raise RunError(f"--reward-init {args.reward_init}: {e}") from None
        for flag, (name, config) in models.items():
            if config and config.vocab_size < self.tok.vocab_size:
                raise RunError(f"{flag} {name}: vocab_size {config.vocab_size} is below the tokenizer's "
                               f"{self.tok.vocab_size} tokens (an id past the embedding rows would stop the run)")
        if args.max_prompt_len + args.max_response_len > self.policy.config.block_size:
            raise RunError(f"--max-prompt-len {args.max_prompt_len} + --max-response-len {args.max_response_len} "
                           f"tokens exceed --model {args.model}'s {self.policy.config.block_size} positions")


    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # cache_enabled=False: inside one autocast block the bf16 copies of the weights are cached,
        # so a block spanning optimizer steps would keep computing with the stale weights
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)

    def save(self, model, directory):
        """save_model(model, directory) and its tokenizer.json (a byte-token dry run writes
        one that encodes as ByteTokenizer), so that the directory works as the next --model."""
        def tokenizer(tmp):  # rank 0, into the temp directory that then replaces `directory`
            if self.tokenizer_json:
                shutil.copyfile(self.tokenizer_json, tmp / "tokenizer.json")
            else:
                self.tok.save(tmp / "tokenizer.json")
        run.save_model_dir(model, directory, Path(self.args.out), tokenizer)  # every rank (FSDP2 gathers)

    def new_scalar(self):
        if not self.args.reward_init:
            return scalar_from_policy(self.policy)
        p = next(self.policy.parameters())
        try:
            scalar = load_model(ScalarGPT, self.args.reward_init, p.dtype, p.device)
        except (FileNotFoundError, ValueError) as e:
            raise RunError(f"--reward-init {self.args.reward_init}: {e}") from None
        scalar.gradient_checkpointing = self.policy.gradient_checkpointing
        return scalar

    @torch.no_grad()
    def evaluate(self, policy):
        p, m, demos = self.eval
        ys, bs = [], self.args.forward_batch_size  # every no-grad pass: --forward-batch-size rows at most
        # the temperature PPO samples and optimises the policy at; train_sft.py has none: TL;DR's 0.7
        temperature = getattr(self.args, "temperature", None)
        temperature = 0.7 if temperature is None else temperature
        # the same draws at every evaluation (common random numbers), and none from the global RNG,
        # which a resumed run reaches in another state (its models are rebuilt after the restore)
        gen = torch.Generator(self.device).manual_seed(self.args.seed)
        with self.autocast():
            for i in range(0, len(p), bs):
                ys.append(policy.sample(p[i:i + bs], m[i:i + bs], self.response_len, self.eos_id, self.pad_id,
                                        temperature=temperature, generator=gen)[0])
        y = torch.cat(ys)
        out = {"length": sequence_lengths(y, self.eos_id).float().mean().item(),
               "eos_rate": ends_with_eos(y, self.eos_id).float().mean().item(), "eval_temperature": temperature}
        if self.gold:
            cfg = mlirl.MLIRLConfig(eos_id=self.eos_id, pad_id=self.pad_id)
            gold = lambda p, m, y: mlirl.sequence_rewards(self.gold, p, m, y, cfg).float()
            with self.autocast():
                g_y, g_d = in_chunks(gold, bs, p, m, y), in_chunks(gold, bs, p, m, demos)
            out.update(gold_reward=g_y.mean().item(), win_rate=accuracy(g_y, g_d))
        return out

    @torch.no_grad()
    def reward_accuracy(self, reward_model, level="sequence"):
        if self.pairs is None:
            return None
        cfg = mlirl.MLIRLConfig(level=level, eos_id=self.eos_id, pad_id=self.pad_id)
        p, m, bs = self.pairs["prompts"], self.pairs["prompt_mask"], self.args.forward_batch_size
        reward = lambda p, m, y: mlirl.sequence_rewards(reward_model, p, m, y, cfg).float()
        with self.autocast():  # 2,048 pairs x 565 tokens at once would take ~60 GB of activations at 1b
            r_c = in_chunks(reward, bs, p, m, self.pairs["chosen"])
            r_r = in_chunks(reward, bs, p, m, self.pairs["rejected"])
        return accuracy(r_c, r_r)


def in_chunks(fn, batch_size, *tensors):
    """fn(*rows) over chunks of batch_size rows of the tensors, concatenated: a no-grad pass in
    --forward-batch-size pieces."""
    return torch.cat([fn(*(t[i:i + batch_size] for t in tensors)) for i in range(0, len(tensors[0]), batch_size)])


def load_gold_model(name, device, dtype=None):
    """--gold-model: a reward model with its trained scalar head. A causal LM would load with a
    fresh random head (model.py does that for reward models initialised from an LM) and give
    plausible-looking gold rewards and win rates of noise, so it is refused."""
    try:
        files = hub.resolve_weights(name)
        if not {"score.weight", "scalar_head.weight"} & tensor_names(files):  # ours, or the TL;DR code's
            raise RunError(f"--gold-model {name}: {files[0].parent} has no trained scalar head (no tensor "
                           "score.weight: a causal LM?); give a reward model, e.g. a reward_model/ of train_mlirl.py")
        return load_model(ScalarGPT, name, dtype, device)
    except (FileNotFoundError, ValueError) as e:
        raise RunError(f"--gold-model {name}: {e}") from None


def tensor_names(files):
    """The tensor names in weight files, read without the tensors (safetensors: the header; a zip
    .bin is mapped, an old pickled one read whole). A damaged file is one line naming it."""
    names = set()
    for f in files:
        if f.suffix == ".safetensors":
            names |= safetensors_header(f)[0].keys() - {"__metadata__"}
        else:
            names |= read_bin(f, mmap=True).keys()
    return names


def scalar_from_policy(policy):
    """A ScalarGPT whose transformer is a copy of the policy's and whose head is new."""
    p, policy = next(dist.unwrap(policy).parameters()), dist.unwrap(policy)
    scalar = ScalarGPT(policy.config).to(device=p.device, dtype=p.dtype)
    whole = dist.state_dict(policy)  # FSDP2: the shards gathered
    scalar.gpt_neox.load_state_dict({k.removeprefix("gpt_neox."): v for k, v in whole.items() if k.startswith("gpt_neox.")})
    scalar.gradient_checkpointing = policy.gradient_checkpointing
    return scalar
