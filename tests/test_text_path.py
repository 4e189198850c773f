"""
The text path's numerics and randomness, checked on the CPU where a GPU run would differ: random
draws on the generator's own device, the fp32 output heads under bf16 autocast, the learned
reward's fixed offset (demonstrations score 0) and the PPO learning-rate decay.
"""
import math

import pytest
import torch

from test_scripts import TEXT_FLAGS, short_tldr, tiny_text_run  # noqa: F401 (short_tldr: a fixture)


PlainGenerator = torch.Generator


class DeviceGenerator(torch.Generator):
    """The generator a script makes for --device, torch.Generator(device): on CUDA a CUDA generator.
    On this CPU it is a CPU one, so what marks it is this class: a draw it is handed must run on its
    device. torch.Generator() with no device (a CPU generator by intent) stays a plain one."""
    def __new__(cls, device=None):
        return PlainGenerator() if device is None else super().__new__(cls, device)


def test_every_random_draw_runs_on_its_generators_device(tmp_path, short_tldr, monkeypatch):
    """torch rejects a CUDA generator in a CPU op ("Expected a 'cpu' device type for generator").
    Each script that samples runs in this process with the generator it makes for its device
    marked, and every torch random function checks its call: a factory draw (randperm, randint,
    rand, randn) must name device=generator.device, since its default, the CPU, is where a CUDA
    generator fails; multinomial must get a probability tensor on the generator's device, and the
    exponential noise of sampling (nanoirl/dist.py) must be drawn there."""
    import train_airl
    import train_mlirl
    seen = []
    monkeypatch.setattr(torch, "Generator", DeviceGenerator)
    for name in ("randperm", "randint", "rand", "randn", "multinomial"):
        def checked(*args, _f=getattr(torch, name), _name=name, **kwargs):
            g = kwargs.get("generator")
            if isinstance(g, DeviceGenerator):
                where = args[0].device if _name == "multinomial" else kwargs.get("device")
                seen.append((_name, where))
                assert where is not None and torch.device(where) == g.device, \
                    f"torch.{_name} runs on {where or 'the CPU (by default)'}, its generator on {g.device}"
            return _f(*args, **kwargs)
        monkeypatch.setattr(torch, name, checked)

    def exponential_(self, *args, _f=torch.Tensor.exponential_, **kwargs):  # sampling's noise (nanoirl/dist.py)
        g = kwargs.get("generator")
        if isinstance(g, DeviceGenerator):
            seen.append(("exponential_", self.device))
            assert self.device == g.device, f"Tensor.exponential_ runs on {self.device}, its generator on {g.device}"
        return _f(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "exponential_", exponential_)
    text = tiny_text_run(tmp_path, short_tldr)
    for module, script, extra in [(train_airl, "train_airl.py", []), (train_mlirl, "train_mlirl.py", []),
                                  (train_mlirl, "train_mlirl.py", ["--policy-step", "bon", "--bon-steps", 1])]:
        flags = [*text, *TEXT_FLAGS[script], *extra, "--out", tmp_path / f"{script}{len(extra)}"]
        module.main(module.parser.parse_args(list(map(str, flags))))
    names = {n for n, _ in seen}
    assert {"randperm", "randint", "exponential_"} <= names, names  # the check saw every kind of draw


def test_output_heads_are_fp32_under_bf16_autocast():
    """The vocabulary head and the scalar head run in fp32 under bf16 autocast: their outputs equal
    an fp32 matmul of the same hidden states (bf16 logits of magnitude 16-32 would round by up to
    0.06), and GPT.logprobs is the fp32 log-softmax of those logits."""
    import torch.nn.functional as F

    from nanoirl.model import GPT, GPTConfig, ScalarGPT
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=96, block_size=32, n_layer=2, n_head=2, n_embd=32)
    gpt, scalar = GPT(cfg), ScalarGPT(cfg)
    with torch.no_grad():
        gpt.embed_out.weight.mul_(40)  # logits of a trained model's size, where bf16 spacing is 0.125
    idx = torch.randint(2, 96, (3, 12))
    prompts, mask, y = idx[:, :8], torch.ones(3, 8, dtype=torch.bool), idx[:, 8:]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        h, logits = gpt.gpt_neox(idx), gpt.head(gpt.gpt_neox(idx))
        hs, s = scalar.gpt_neox(idx), scalar(idx)
        lp = gpt.logprobs(prompts, mask, y)
        h_resp = gpt.gpt_neox(idx[:, :-1], torch.ones(3, 11, dtype=torch.bool))[:, 7:]
    with torch.no_grad():  # the fp32 references, outside autocast
        assert logits.dtype == s.dtype == lp.dtype == torch.float32 and logits.abs().max() > 16
        assert torch.equal(logits, F.linear(h.float(), gpt.embed_out.weight))
        assert torch.equal(s, F.linear(hs.float(), scalar.score.weight, scalar.score.bias).squeeze(-1))
        want = F.log_softmax(F.linear(h_resp.float(), gpt.embed_out.weight), -1).gather(-1, y[..., None])
    assert torch.allclose(lp, want.squeeze(-1), atol=1e-5, rtol=0)


def run_in_process(module, flags):
    """A training script's main() in this process (fast: no interpreter start-up)."""
    module.main(module.parser.parse_args(list(map(str, flags))))


def test_ppo_learning_rate_decays_linearly_over_each_phase(tmp_path, monkeypatch):
    """Detail 14 (the TL;DR code's linear decay): update i of n runs at lr (1 - i/n), over the whole
    run of train_airl.py and over each ML-IRL round's PPO phase; the discriminator's lr stays."""
    import train_airl
    import train_mlirl
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    seen = []
    hook = register_optimizer_step_pre_hook(lambda opt, *_: seen.append(opt.param_groups[0]["lr"]))
    try:
        run_in_process(train_airl, ["--steps", 4, "--disc-steps", 1, "--ppo-lr", 0.05, "--disc-lr", 0.1,
                                    "--out", tmp_path / "airl"])
        ppo_steps = 4 * 4 * 2  # epochs x minibatches x (policy, value) per update
        airl = [lr for lr in seen if lr != 0.1]
        assert airl == pytest.approx([0.05 * (1 - i / 4) for i in range(4) for _ in range(ppo_steps)], rel=1e-12)
        seen.clear()
        run_in_process(train_mlirl, ["--model", "toy-tabular", "--rounds", 2, "--sft-steps", 1, "--ppo-iterations", 3,
                                     "--rm-epochs", 1, "--rm-lr", 0.01, "--out", tmp_path / "mlirl"])
        rounds = seen[1:]  # after the one SFT step; each round: the reward step's (cosine from 0.01), then PPO's
        want = [0.05 * (1 - i / 3) for i in range(3) for _ in range(ppo_steps)]
        assert [lr for lr in rounds if lr > 0.01] == pytest.approx(want * 2, rel=1e-12)
    finally:
        hook.remove()


def test_learned_rewards_score_the_demonstrations_zero(tmp_path, monkeypatch):
    """The reward PPO receives is on a fixed scale: at every rollout, the mean sequence reward of
    the demonstrations is 0 (to 1e-12): ML-IRL's Bradley-Terry reward over all demonstrations,
    the discriminator's reward over the iteration's batch, so that PPO's -1 for a missing EOS is
    a penalty (on the raw logit, once D < 0.27 a truncated response would score above an ended one)."""
    import train_airl
    import train_mlirl
    from nanoirl import data, ppo
    from nanoirl.policy import sequence_lengths
    means, demos = [], {}
    rollout, iterate_batches = ppo.rollout, data.iterate_batches

    def batches(d, *args):  # train_airl's batches: remember the one being trained on
        for b in iterate_batches(d, *args):
            if "prompts" in b:  # not ML-IRL's SFT batches
                demos["batch"] = (b["prompts"], b["prompt_mask"], b["responses"])
            yield b

    def checked_rollout(policy, ref, value, prompts, prompt_mask, reward_fn, cfg, *args):
        p, m, y = demos["batch"]
        r = reward_fn(p, m, y)  # (B, R): the sequence reward on each demonstration's last token
        means.append(r.gather(1, sequence_lengths(y, cfg.eos_id)[:, None] - 1).mean().item())
        return rollout(policy, ref, value, prompts, prompt_mask, reward_fn, cfg, *args)
    monkeypatch.setattr(ppo, "rollout", checked_rollout)
    monkeypatch.setattr(data, "iterate_batches", batches)
    run_in_process(train_airl, ["--steps", 3, "--disc-steps", 2, "--out", tmp_path / "airl"])
    assert len(means) == 3 and max(map(abs, means)) < 1e-12, means
    means.clear()
    load_task = train_mlirl.load_task

    def task_demos(*args, **kwargs):
        task = load_task(*args, **kwargs)
        demos["batch"] = task.demos
        return task
    monkeypatch.setattr(train_mlirl, "load_task", task_demos)
    run_in_process(train_mlirl, ["--rounds", 2, "--sft-steps", 20, "--ppo-iterations", 2, "--out", tmp_path / "mlirl"])
    assert len(means) == 4 and max(map(abs, means)) < 1e-12, means


def test_mlirl_negatives_are_drawn_at_the_policy_steps_temperature(tmp_path, short_tldr, monkeypatch):
    """MLIRL Eq. 11 compares the demonstrations with samples of the policy the policy step
    produced: on text PPO samples and optimises at T = 0.7, and so must the pairs' negatives
    (every GPT.sample call of a run is at 0.7), unless --sample-temperature says otherwise."""
    import train_mlirl
    from nanoirl import mlirl, ppo
    from nanoirl.model import GPT
    assert mlirl.MLIRLConfig().sample_temperature == ppo.PPOConfig().temperature == 0.7
    temps, sample = [], GPT.sample

    def recorded(self, prompts, prompt_mask, max_new_tokens, eos_id, pad_id, temperature=1.0, **kw):
        temps.append(temperature)
        return sample(self, prompts, prompt_mask, max_new_tokens, eos_id, pad_id, temperature, **kw)
    monkeypatch.setattr(GPT, "sample", recorded)
    text = [*tiny_text_run(tmp_path, short_tldr), *TEXT_FLAGS["train_mlirl.py"]]
    run_in_process(train_mlirl, [*text, "--out", tmp_path / "a"])
    assert temps and set(temps) == {0.7}, temps
    temps.clear()
    run_in_process(train_mlirl, [*text, "--sample-temperature", 1.0, "--out", tmp_path / "b"])
    assert temps.count(1.0) == 1 and set(temps) == {0.7, 1.0}  # one round's negatives


def test_spin_reads_its_log_ratios_at_the_negatives_temperature(tmp_path, short_tldr, monkeypatch):
    """SPIN on text draws its negatives at T = 0.7: its DPO log-ratios must be those of the same
    tempered policy (logits / 0.7), or its exact round is pi_k p / pi_k^(0.7) instead of p. Every
    log-prob inside dpo.spin_policy_step, the policy's and the reference's, is at the temperature
    of every sample of the run (0.7; with --sample-temperature 1, 1), the evaluation's included,
    which samples at the policy's --temperature and logs it as eval_temperature."""
    import json

    import train_mlirl
    from nanoirl import dpo
    from nanoirl.model import GPT
    seen, in_spin = {"sample": [], "logprobs": []}, []
    sample, logprobs, spin_step = GPT.sample, GPT.logprobs, dpo.spin_policy_step

    def recorded_sample(self, prompts, prompt_mask, max_new_tokens, eos_id, pad_id, temperature=1.0, **kw):
        seen["sample"].append(temperature)
        return sample(self, prompts, prompt_mask, max_new_tokens, eos_id, pad_id, temperature, **kw)

    def recorded_logprobs(self, prompts, prompt_mask, responses, temperature=1.0):
        if in_spin:  # not SFT's (round 0 fits the untempered logits)
            seen["logprobs"].append(temperature)
        return logprobs(self, prompts, prompt_mask, responses, temperature)

    def spin(*args, **kw):
        in_spin.append(True)
        try:
            return spin_step(*args, **kw)
        finally:
            in_spin.clear()
    monkeypatch.setattr(GPT, "sample", recorded_sample)
    monkeypatch.setattr(GPT, "logprobs", recorded_logprobs)
    monkeypatch.setattr(dpo, "spin_policy_step", spin)
    text = [*tiny_text_run(tmp_path, short_tldr), *TEXT_FLAGS["train_mlirl.py"], "--policy-step", "spin",
            "--dpo-epochs", 1]
    for t, extra in ((0.7, []), (1.0, ["--sample-temperature", 1.0, "--temperature", 1.0])):
        seen["sample"].clear(), seen["logprobs"].clear()
        run_in_process(train_mlirl, [*text, *extra, "--out", tmp_path / f"spin-{t}"])
        assert len(seen["logprobs"]) >= 4 and set(seen["logprobs"]) == set(seen["sample"]) == {t}, seen
        rows = [json.loads(line) for line in (tmp_path / f"spin-{t}" / "metrics.jsonl").read_text().splitlines()]
        assert [r["eval_temperature"] for r in rows] == [t, t]  # round 0 (SFT) and round 1


def test_no_grad_passes_are_chunked_by_forward_batch_size(tmp_path, monkeypatch):
    """--forward-batch-size bounds the rows of every no-grad forward pass of the text path:
    rollouts, pairs, the reward offset, the held-out pair accuracy (2,048 pairs in one pass would
    take ~60 GB of activations at pythia-1b), the evaluation and its gold model, Best-of-N (batch x
    n samples), SPIN's reference and RLignment's samples; --micro-batch-size bounds the passes with
    gradients. Here both are 2, with 8 held-out pairs, 6 held-out demonstrations, 4 rollouts and
    Best-of-4 on 2 prompts: a pass over all of any of them would be seen."""
    import train_airl
    import train_mlirl
    from nanoirl import data
    from nanoirl.checkpoint import save_model
    from nanoirl.model import GPTConfig, GPTNeoX, ScalarGPT
    sizes = {False: [], True: []}  # no grad, grad: the batch of every transformer pass
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda mod, args: sizes[torch.is_grad_enabled()].append(len(args[0])) if isinstance(mod, GPTNeoX) else None)
    records = [{"prompt": f"q{i}:", "response": f" a{i % 3}"} for i in range(12)]
    pairs = [{"prompt": f"q{i}:", "chosen": f" a{i % 3}", "rejected": f" b{i}"} for i in range(8)]
    data.write_jsonl(tmp_path / "demos.jsonl", records)
    data.write_jsonl(tmp_path / "pairs.jsonl", pairs)
    save_model(ScalarGPT(GPTConfig(vocab_size=256, block_size=96, n_layer=1, n_head=2, n_embd=16)), tmp_path / "gold")
    text = [*tiny_text_run(tmp_path, tmp_path / "demos.jsonl"), "--eval-size", 6, "--gold-model", tmp_path / "gold",
            "--forward-batch-size", 2, "--micro-batch-size", 2]
    mlirl = [*TEXT_FLAGS["train_mlirl.py"], "--eval-pairs", tmp_path / "pairs.jsonl", "--rollout-batch-size", 4]
    try:
        for i, flags in enumerate([mlirl, [*mlirl, "--policy-step", "bon", "--bon-n", 4, "--bon-steps", 1],
                                   [*mlirl, "--policy-step", "spin", "--dpo-epochs", 1],
                                   [*mlirl, "--pairs", "init-sft"]]):
            run_in_process(train_mlirl, [*text, *flags, "--out", tmp_path / f"mlirl-{i}"])
        run_in_process(train_airl, [*text, *TEXT_FLAGS["train_airl.py"], "--rollout-batch-size", 4,
                                    "--out", tmp_path / "airl"])
    finally:
        hook.remove()
    assert len(sizes[False]) > 50 and max(sizes[False]) == 2 and max(sizes[True]) == 2, sizes


@pytest.mark.slow
def test_gail_token_reward_keeps_the_experts_length(tmp_path):
    """The default GAIL reward, -log(1 - D) - log 2, is 0 at D = 1/2: at the token level its
    gradient is the JS divergence's, and the policy's expected length lands next to the expert's
    (3.99 tokens); the uncentred -log(1 - D) pays every extra token and runs longer. Full table,
    PPO on a learned token-level discriminator, train_airl.py's defaults."""
    import json

    import train_airl
    from toy.mdp import ToyMDP
    from toy.metrics import summary
    expert = summary(ToyMDP(), ToyMDP().expert_logprob)["length"]
    lengths = {}
    for name, flag in (("default", []), ("uncentred", ["--gail-reward=-log(1-D)"])):
        run_in_process(train_airl, ["--divergence", "js", "--level", "token", *flag, "--out", tmp_path / name])
        lengths[name] = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])["length"]
    print("expert", expert, lengths)
    assert abs(lengths["default"] - expert) < 0.1 < lengths["uncentred"] - expert, (expert, lengths)


def test_exponential_rewards_are_clipped_not_overflowing(tmp_path):
    """e^h - 1 overflows fp32 at h > 88 and fp64 at h > 709: a discriminator driven to huge logits
    (lr 1000) stopped the forward-KL run with "score is inf". The logit is clipped to
    +-(--logit-clip) before the reward is read, and reward_clipfrac says how often."""
    import json

    import train_airl
    run_in_process(train_airl, ["--divergence", "forward-kl", "--disc-lr", 1000, "--steps", 3, "--eval-every", 3,
                                "--out", tmp_path / "fkl"])
    rows = [json.loads(line) for line in (tmp_path / "fkl" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and max(r["reward_clipfrac"] for r in rows) > 0.1
    assert all(abs(r["score"]) <= 2 * (2.718281828 ** 20) for r in rows)  # |e^h - 1| <= e^20 per response


def test_alpha_rewards_are_bounded_in_fp32(tmp_path):
    """alpha-IRL's reward (e^((1-a) h) - 1) / (1 - a) at a = -10: with h clipped to +-20 alone the
    exponent reaches 220, inf in fp32 (and 6e94 per response in the toy's fp64). --logit-clip bounds
    the exponent: h is clipped to +-20/11, the reward to [-(1 - e^-20), e^20 - 1] / 11."""
    import argparse
    import json

    import train_airl
    args = argparse.Namespace(divergence="alpha", alpha=-10.0, logit_clip=20.0, gail_reward=None, fairl_reward=None)
    h = torch.tensor([-1e4, -20.0, 0.0, 20.0, 1e4], dtype=torch.float32)
    r = train_airl.reward_map(args)(h.clamp(-train_airl.logit_bound(args), train_airl.logit_bound(args)))
    assert train_airl.logit_bound(args) == pytest.approx(20 / 11)
    assert torch.isfinite(r).all() and r[-1].item() == pytest.approx(math.expm1(20) / 11, rel=1e-6)
    assert r[0].item() == pytest.approx(math.expm1(-20) / 11, rel=1e-6) and r[2] == 0
    run_in_process(train_airl, ["--divergence", "alpha", "--alpha", -10, "--disc-lr", 1000, "--steps", 3,
                                "--eval-every", 3, "--out", tmp_path / "alpha"])
    rows = [json.loads(line) for line in (tmp_path / "alpha" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and max(r["reward_clipfrac"] for r in rows) > 0.1
    assert all(abs(r["score"]) <= 2 * math.expm1(20) / 11 for r in rows)  # minus the offset: at most twice


BF16_RESUME = {  # script: flags; the run is stopped right after its second checkpoint
    "train_sft.py": ["--steps", 6, "--batch-size", 2, "--ckpt-every", 2, "--eval-every", 3],
    "train_airl.py": ["--steps", 4, "--rollout-batch-size", 2, "--disc-steps", 1, "--ckpt-every", 1, "--eval-every", 2],
    "train_mlirl.py": ["--rounds", 3, "--sft-steps", 2, "--batch-size", 2, "--ppo-iterations", 2,
                       "--rollout-batch-size", 2, "--rm-batch-size", 6],
}


class Stop(BaseException):
    """Ends a run in this process the moment a checkpoint is written, as a kill would."""


@pytest.mark.slow
@pytest.mark.parametrize("script", BF16_RESUME)
def test_bf16_text_run_resumes_exactly(tmp_path, short_tldr, script, monkeypatch):
    """The text path under --dtype bfloat16 (CPU autocast, fp32 master weights), on a tiny local
    GPT-NeoX with a byte-level tokenizer: a run stopped right after its second checkpoint and
    resumed with --resume ends with the metrics.jsonl bytes and the checkpoint of an uninterrupted
    run. In this process: a SIGKILL mid-run, with lines logged past the checkpoint, is
    tests/test_scripts.py::test_killed_run_resumes_exactly's (the toy) and tests/test_dist.py's."""
    import importlib

    from test_scripts import assert_same

    from nanoirl import resume
    module = importlib.import_module(script[:-3])
    flags = [*tiny_text_run(tmp_path, short_tldr), "--dtype", "bfloat16", *BF16_RESUME[script]]
    save, saved = resume.save_checkpoint, {"whole": [], "cut": [], "resumed": []}

    def counted_save(*args, **kwargs):
        saved[phase].append(save(*args, **kwargs))
        if phase == "cut" and len(saved["cut"]) == 2:
            raise Stop
        return saved[phase][-1]
    monkeypatch.setattr(resume, "save_checkpoint", counted_save)
    phase = "whole"
    run_in_process(module, [*flags, "--out", tmp_path / "whole"])
    phase = "cut"
    with pytest.raises(Stop):
        run_in_process(module, [*flags, "--out", tmp_path / "cut"])
    phase = "resumed"
    run_in_process(module, [*flags, "--resume", "--out", tmp_path / "cut"])
    assert len(saved["resumed"]) == len(saved["whole"]) - 2 > 0  # it went on from the checkpoint, not from 0
    metrics = lambda name: (tmp_path / name / "metrics.jsonl").read_bytes()
    assert metrics("cut") == metrics("whole")
    a, b = (torch.load(tmp_path / name / "ckpt.pt", weights_only=True) for name in ("whole", "cut"))
    same = lambda c: {k: v for k, v in c.items() if k not in ("config", "sha256")}  # config: --resume differs
    assert_same(same(a), same(b))
