"""
The text path's numerics and randomness, checked on the CPU where a GPU run would differ: random
draws on the generator's own device, the fp32 output heads under bf16 autocast, the learned
reward's fixed offset (demonstrations score 0) and the PPO learning-rate decay.
"""
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
    generator fails; multinomial must get a probability tensor on the generator's device."""
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
    text = tiny_text_run(tmp_path, short_tldr)
    for module, script, extra in [(train_airl, "train_airl.py", []), (train_mlirl, "train_mlirl.py", []),
                                  (train_mlirl, "train_mlirl.py", ["--policy-step", "bon", "--bon-steps", 1])]:
        flags = [*text, *TEXT_FLAGS[script], *extra, "--out", tmp_path / f"{script}{len(extra)}"]
        module.main(module.parser.parse_args(list(map(str, flags))))
    names = {n for n, _ in seen}
    assert {"randperm", "randint", "multinomial"} <= names, names  # the check saw every kind of draw


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
