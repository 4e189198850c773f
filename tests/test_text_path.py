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
