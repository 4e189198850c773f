"""
The toy as text (toy/text.py): the written files read back by the text loader as the toy's own
demonstrations, the exact enumeration of a text policy over the toy language, and the text path's
SFT landing where the toy path's lands.
"""
import json

import pytest
import torch

from nanoirl import data
from nanoirl.checkpoint import save_model
from nanoirl.model import GPT, GPTConfig
from nanoirl.tokenizer import ByteTokenizer
from test_scripts import InProcess, byte_level_tokenizer_json
from toy import text
from toy.mdp import ToyMDP


def toy_ids(tok, mdp):
    """The text token of each toy token: EOS and pad are the tokenizer's, a letter its byte."""
    return {mdp.eos_id: tok.eos_id, mdp.pad_id: tok.pad_id,
            **{2 + i: tok.encode(mdp.letter(i))[0] for i in range(mdp.L)}}


def test_written_demonstrations_read_back_as_the_toys(tmp_path):
    """demos.jsonl, read by the text loader and tokenised as the text path tokenises --data (UTF-8
    bytes, --max-response-len = the horizon), is the held-out demonstrations and then, token for
    token, the demonstrations ToyTask draws with --n-demos 40 --seed 7, in order. Every pair's
    chosen response has the higher gold reward."""
    mdp, (prompts, _, responses) = text.write(tmp_path, 40, seed=7, held_out=3, n_pairs=64)
    import train_sft
    from toy.task import ToyTask  # the toy path's own draw, as train_sft.py makes it
    demos = ToyTask(train_sft.parser.parse_args(["--n-demos", "40", "--seed", "7"]), torch.device("cpu"), None).demos
    assert torch.equal(demos[2], responses) and torch.equal(demos[0], prompts)
    examples = data.load_demonstrations(tmp_path / "demos.jsonl")[3:]
    tok = ByteTokenizer()
    t = data.tokenize(examples, tok, 16, mdp.T, max_truncated_share=1.0)
    ids = toy_ids(tok, mdp)
    assert t["responses"].tolist() == [[ids[int(y)] for y in r] for r in responses]
    assert [e["prompt"] for e in examples] == [text.PROMPT.format(x=int(x)) for x in mdp.prompt_index(prompts)]
    g = mdp.gold_reward()
    for pair in data.load_preferences(tmp_path / "pairs.jsonl"):
        x = int(pair["prompt"].split()[1].rstrip(":"))
        gold = [g[x, mdp.index[tuple(data_ids(mdp, pair[k]))]] for k in ("chosen", "rejected")]
        assert gold[0] > gold[1]
    assert json.loads((tmp_path / "toy.json").read_text())["n_demos"] == 40


def data_ids(mdp, letters):
    """A response string as the toy's (T,) tokens."""
    y = mdp.encode(letters) + ([mdp.eos_id] if len(letters) < mdp.T else [])
    return y + [mdp.pad_id] * (mdp.T - len(y))


def test_a_policy_of_toy_tokens_only_puts_all_its_mass_on_the_toy_language(tmp_path):
    """A GPT-NeoX on byte tokens whose logits are masked to EOS and the letters a, b, c: every
    sequence it can emit is a toy response (ended by EOS, or cut at the horizon), so the enumerated
    masses sum to 1 per prompt (float64, to 1e-9; at temperatures 1 and 0.7) and outside_language
    is 0. Unmasked, the same network puts nearly all its mass elsewhere (252 other tokens), and
    outside_language says so."""
    text.write(tmp_path, 6, seed=1, n_pairs=8)
    lang = text.ToyLanguage(json.loads((tmp_path / "toy.json").read_text()), ByteTokenizer(), 16, ToyMDP().T)
    torch.manual_seed(0)
    policy = GPT(GPTConfig(vocab_size=256, block_size=32, n_layer=1, n_head=2, n_embd=16)).double()
    unmasked = lang.evaluate(policy, 512)
    assert unmasked["outside_language"] > 0.9
    policy.set_allowed_tokens(sorted(set(toy_ids(ByteTokenizer(), lang.mdp).values()) - {ByteTokenizer.pad_id}))
    for temperature in (1.0, 0.7):  # at PPO's sampling temperature too
        logd = lang.logd(policy, 512, temperature)
        assert (logd.logsumexp(-1) - 0).abs().max() < 1e-9
    out = lang.evaluate(policy, 512)
    assert abs(out["outside_language"]) < 1e-9
    assert 0 < out["eos_rate"] < 1 and out["length"] > 1


def test_toy_eval_refuses_an_eos_cut_and_a_wrong_eval_size(tmp_path):
    """--max-response-len below the horizon would cut the EOS of shorter toy responses ("abc" would
    read as a prefix of "abca"): refused. So is an --eval-size that would hold out training
    demonstrations."""
    from nanoirl.cli import RunError
    text.write(tmp_path, 6, 1, n_pairs=8)
    meta = json.loads((tmp_path / "toy.json").read_text())
    with pytest.raises(RunError, match="cuts the EOS"):
        text.ToyLanguage(meta, ByteTokenizer(), 16, ToyMDP().T - 1)
    model = tmp_path / "tiny"
    save_model(GPT(GPTConfig(vocab_size=256, block_size=32, n_layer=1, n_head=2, n_embd=16)), model)
    byte_level_tokenizer_json(model / "tokenizer.json")
    r = InProcess(tmp_path, "run", "train_sft.py", "--model", model, "--toy-eval", tmp_path, "--max-prompt-len", 16,
                  "--max-response-len", 5, "--eval-size", 2, "--device", "cpu", "--steps", 1)
    assert r.returncode == 1 and "pass --eval-size 3" in r.stderr, r.stderr


@pytest.mark.slow
def test_text_sft_lands_near_the_toy_paths_forward_kl(tmp_path):
    """train_sft.py --toy-eval on a random GPT-NeoX (2 layers, d 32, byte tokens, all 256 logits
    free) and train_sft.py --model toy-gpt (the same layers, the toy's 8 tokens) on the same 60
    demonstrations, 300 steps at lr 3e-3, float64. Measured (seeds 1, 2, 3): forward KL to the
    expert, text 0.290, 0.274, 0.420 against toy 0.364, 0.406, 0.444; length 3.95, 3.97, 3.93
    against 3.97, 3.98, 3.93; the text policy keeps 0.030, 0.025, 0.024 of its mass outside the toy
    language. Seed 1 is checked here: forward KL within 0.25 nats of the toy path's, length within
    0.1, outside_language below 0.05 (~9 s: the two runs)."""
    text.write(tmp_path / "data", 60, seed=1)
    torch.manual_seed(1)
    save_model(GPT(GPTConfig(vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=32)), tmp_path / "tiny")
    byte_level_tokenizer_json(tmp_path / "tiny" / "tokenizer.json")
    common = ["--steps", 300, "--lr", "3e-3", "--seed", 1, "--n-demos", 60, "--eval-every", 300, "--device", "cpu"]
    runs = [InProcess(tmp_path, "text", "train_sft.py", "--model", tmp_path / "tiny", "--toy-eval", tmp_path / "data",
                      "--max-prompt-len", 16, "--max-response-len", 5, "--eval-size", 3, "--dtype", "float64", *common),
            InProcess(tmp_path, "toy", "train_sft.py", "--model", "toy-gpt", *common)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    on_text, on_toy = (json.loads((r.out / "metrics.jsonl").read_text().splitlines()[-1]) for r in runs)
    assert abs(on_text["fkl"] - on_toy["fkl"]) < 0.25, (on_text, on_toy)
    assert abs(on_text["length"] - on_toy["length"]) < 0.1
    assert on_text["outside_language"] < 0.05
