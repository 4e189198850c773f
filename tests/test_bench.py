"""
bench.py on CPU with tiny shapes: the formulas against hand counts and known figures, the fairness
of the comparison (transformers' twin computes the same logits, generate samples at plain
temperature), and every section end to end with every JSON field. Timings are never asserted.
"""
import json
import math
import sys
import time

import pytest
import torch

import bench
from nanoirl.model import CONFIGS, GPTConfig

try:
    import transformers
except ImportError:
    transformers = None
needs_hf = pytest.mark.skipif(transformers is None, reason="transformers (the reference) not installed")


def test_train_flops_match_a_hand_count():
    cfg = GPTConfig(vocab_size=64, block_size=64, n_layer=2, n_head=2, n_embd=32)  # d 32, MLP 128
    L, d, V, T = 2, 32, 64, 10
    matmul = L * 2 * (d * 3 * d + d * d + d * 4 * d + 4 * d * d) + 2 * d * V  # forward, per token
    attention = L * (2 * T * d + 2 * T * d)                                    # QK^T and AV, forward
    small = L * (3 * d + d + 4 * d + d + 4 * d) + 2 * d                         # biases and LayerNorms
    assert bench.train_flops_per_token(cfg, T) == 3 * (matmul + attention) + 6 * small == 172800
    # pythia-1b: 1,011,781,632 parameters; 805,736,448 without either embedding (Pythia paper)
    total, n = bench.n_params(CONFIGS["pythia-1b"])
    assert (total, n - 50304 * 2048) == (1_011_781_632, 805_736_448)


def test_ppo_state_on_hand_numbers():
    """Published parameter counts (Pythia paper): 1b 1,011,781,632 and 2.8b 2,775,208,960; a
    ScalarGPT swaps the 50304 x d head for Linear(d, 1). Bytes: 20 per policy weight (weight, two
    moments, reference, gradient) and 16 per scalar-model weight (value: weight, two moments;
    reward: weight). 2.8b cannot meet the 80 GB target this way: 97.8 GB before any activation."""
    for name, P, d, gb in (("pythia-1b", 1_011_781_632, 2048, 34.78), ("pythia-2.8b", 2_775_208_960, 2560, 97.85)):
        S = P - 50304 * d + d + 1
        state = bench.ppo_state_gb(CONFIGS[name])
        assert sum(state.values()) * 1e9 == pytest.approx(20 * P + 16 * S, rel=1e-12)
        assert sum(state.values()) == pytest.approx(gb, abs=0.005)
        with torch.device("meta"):
            from nanoirl.model import ScalarGPT
            assert sum(p.numel() for p in ScalarGPT(CONFIGS[name]).parameters()) == S


@pytest.mark.slow
def test_memory_estimate_scales_with_the_batch_and_checkpointing_cuts_it():
    """estimate_micro_step_gb (fake tensors, nothing allocated): activations grow linearly with the
    micro-batch (the same increment per row, above a part that does not depend on it), and
    checkpointing keeps far less of them; pythia-1b's 8 x 565 is estimated in seconds."""
    cfg = bench.CONFIGS["tiny"]
    one, two, four = (bench.estimate_micro_step_gb(cfg, B, 40, 8, False) for B in (4, 8, 16))
    assert one > 0 and four - two == pytest.approx(2 * (two - one), rel=0.1)
    assert two - one > one / 2  # the growing part is most of it
    big, small = (bench.estimate_micro_step_gb(CONFIGS["pythia-1b"], 8, 512, 53, c) for c in (False, True))
    assert 2 < big < 20  # at least the 16 layers' inputs in fp32 (16 x 8 x 565 x 2048 x 4 B = 0.6 GB) x 3
    assert small < big / 5


def test_sampling_floor_on_hand_numbers():
    cfg = GPTConfig(vocab_size=8, block_size=16, n_layer=1, n_head=1, n_embd=4, intermediate_size=8)
    N = (4 * 12 + 12) + (4 * 4 + 4) + (4 * 8 + 8) + (8 * 4 + 4) + 3 * 2 * 4 + 8 * 4  # layer, 3 LNs, head
    assert bench.n_params(cfg)[1] == N == 212
    B, P, R = 2, 3, 3
    prefill_flops = 2 * (N - 32) * B * P + 2 * 32 * B + 2 * 1 * 4 * B * P * P  # 2160 + 128 + 144
    # decode steps see S = 4 and 5 positions: bytes 2 (212 + 16 S), FLOPs 848 + 32 S
    memory_bound = bench.sampling_floor(cfg, B, P, R, bandwidth=100, rate=1000)
    assert memory_bound == pytest.approx((2432 / 1000, 552 / 100 + 584 / 100))
    compute_bound = bench.sampling_floor(cfg, B, P, R, bandwidth=100, rate=100)
    assert compute_bound == pytest.approx((prefill_flops / 100, 976 / 100 + 1008 / 100))
    # measured once on an H100 with transformers 5.17 / torch 2.11: a bf16 matmul rate of 790 TFLOP/s and
    # a device copy of 3.0 TB/s, so the 64 x 512 + 53 rollout floor is about 0.2 s (docs/operations.md)
    assert 0.15 < sum(bench.sampling_floor(CONFIGS["pythia-1b"], 64, 512, 53, 3.0e12, 790e12)) < 0.25


@needs_hf
def test_hf_twin_computes_our_logits_and_parity_catches_a_difference():
    cfg = bench.CONFIGS["tiny"]
    ours = bench.random_gpt(cfg, "cpu")
    with torch.no_grad():  # biases 0 and LayerNorms (1, 0) would hide a wrong mapping
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf = bench.hf_twin(ours).eval()
    p, pm = bench.prompts_batch(cfg, 4, 40, "cpu")
    assert not pm.all()  # left padding is exercised
    assert bench.parity(ours, hf, p, pm, torch.device("cpu"))["parity_fp32"] <= 1e-4
    with torch.no_grad():
        hf.gpt_neox.layers[1].post_attention_layernorm.bias.add_(0.01)
    with pytest.raises(SystemExit, match="not the same model"):
        bench.parity(ours, hf, p, pm, torch.device("cpu"))


@needs_hf
def test_generate_samples_at_plain_temperature():
    """With HF_SAMPLING the scores generate samples from are the raw logits / 0.7: no top-k 50."""
    cfg = bench.CONFIGS["tiny"]
    hf = bench.hf_twin(bench.random_gpt(cfg, "cpu")).eval()
    p, pm = bench.prompts_batch(cfg, 3, 20, "cpu")
    out = hf.generate(input_ids=p, attention_mask=pm, temperature=0.7, max_new_tokens=4, eos_token_id=None,
                      pad_token_id=bench.PAD, output_scores=True, output_logits=True,
                      return_dict_in_generate=True, **bench.HF_SAMPLING)
    assert len(out.scores) == out.sequences.shape[1] - 20 >= 1
    for scores, logits in zip(out.scores, out.logits):
        assert torch.isfinite(scores).all()
        torch.testing.assert_close(scores, logits / 0.7)


SMALL = ["--config", "tiny", "--device", "cpu", "--batch", "2", "--sample-batch", "3", "--prompt-len", "12",
         "--response-len", "5", "--ppo-grid", "2x5,4x3", "--toy-grid", "3x3", "--warmup", "0", "--repeats", "1"]


def test_every_section_runs_and_writes_every_field(tmp_path, capsys):
    out = bench.main(bench.parser.parse_args(SMALL + ["--json", str(tmp_path / "b.json")]))
    assert json.loads((tmp_path / "b.json").read_text()) == json.loads(json.dumps(out))
    assert {"config", "args", "hardware", "numerics", "torch", "transformers", "formulas", "table",
            "train", "sample", "ppo", "memory", "toy"} <= out.keys()
    m = out["memory"]
    assert m["plain"]["ppo_peak_gb"] - m["plain"]["micro_step_gb"] == pytest.approx(out["ppo"]["static_gb"])
    assert 0 < m["checkpointing"]["micro_step_gb"] <= m["plain"]["micro_step_gb"]
    for ranks in (2, 4, 8):  # --fsdp rows: the sharded states plus the same micro-step as one GPU
        assert m[f"fsdp_{ranks}_ppo_peak_gb"] == pytest.approx(
            bench.fsdp_state_gb(bench.CONFIGS["tiny"], ranks) + m["checkpointing"]["micro_step_gb"])
    hw = out["hardware"]
    assert hw["matmul_flops_per_s"] > 0 and hw["copy_bytes_per_s"] > 0 and hw["device"] == "cpu"
    sides = ["ours", "hf"] if transformers else ["ours"]
    t = out["train"]
    assert t["seq_len"] == 17 and t["flops_per_token"] == bench.train_flops_per_token(bench.CONFIGS["tiny"], 17)
    for side in sides:
        r = t[side]
        assert r["tokens_per_s"] == pytest.approx(2 * 17 / r["step_s"]) and 0 < r["mfu"] < math.inf
        assert r["mfu"] == pytest.approx(t["flops_per_token"] * r["tokens_per_s"] / hw["matmul_flops_per_s"])
    s = out["sample"]
    assert s["floor_s"] == pytest.approx(s["floor_prefill_s"] + s["floor_decode_s"]) and s["floor_s"] > 0
    for side in sides:  # both sampled every new token of every row: the same amount of work
        assert s[side]["new_tokens"] == 5 and s[side]["tokens_per_s"] == pytest.approx(15 / s[side]["s"])
    if transformers:
        assert t["parity_fp32"] <= 1e-4 and s["parity_fp32"] <= 1e-4
        assert t["parity_amp"] == t["parity_fp32"]  # no autocast on CPU
    assert [(p["batch"], p["response_len"]) for p in out["ppo"]["grid"]] == [(2, 5), (4, 3)]
    for p in out["ppo"]["grid"]:
        assert p["s"] == pytest.approx(p["rollout_s"] + p["update_s"]) and p["rollout_s"] > 0 < p["update_s"]
    assert out["ppo"]["static_gb"] == pytest.approx(sum(bench.ppo_state_gb(bench.CONFIGS["tiny"]).values()))
    (toy,) = out["toy"]["grid"]
    assert toy["trajectories"] == 3 * (1 + 3 + 9 + 27)  # 3 prompts x (k < 3 letters + EOS, or 3 letters)
    assert all(toy[k] > 0 for k in ("enumerate_s", "eval_table_s", "eval_gpt_s", "eval_gpt_by_trajectory_s"))
    assert toy["gpt_tree_max_err"] <= 1e-12  # the prefix tree against every response evaluated
    n = out["numerics"]  # the two heads differ on the same hidden states: the bf16 head rounds
    assert n["head_x10_bf16_head_vs_fp32_head"]["max_err"] > 0 and n["head_x1_fp32_head"]["max_abs_logit"] > 0
    rows = out["table"]
    assert len(rows) == 3 + 2 + 1 + 2 + 2 + 3 + 6 + 1 and all(r.keys() == rows[0].keys() for r in rows)
    assert all(r["met"] in (None, True, False) for r in rows)
    printed = capsys.readouterr().out
    assert all(r["metric"] in printed for r in rows) and "fp32 throughout" in printed


def test_without_transformers_its_columns_are_skipped(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    out = bench.main(bench.parser.parse_args(SMALL + ["--sections", "train,sample"]))
    assert "transformers is not installed" in capsys.readouterr().out
    assert out["transformers"] is None and "hf" not in out["train"] and "hf" not in out["sample"]
    assert all(r["transformers"] is None for r in out["table"]) and out["sample"]["ours"]["new_tokens"] == 5


def test_fsdp_memory_counts_a_layer_and_shards_the_states():
    """bench.fsdp_state_gb: a Pythia layer's weights as counted on a meta-device Layer, the states
    divided by the rank count, and what FSDP2 holds whole (root + two layers) added once."""
    from nanoirl.model import Layer
    for name in ("pythia-160m", "pythia-1b"):
        cfg = bench.CONFIGS[name]
        with torch.device("meta"):
            assert sum(p.numel() for p in Layer(cfg).parameters()) == bench.layer_params(cfg)
        state = sum(bench.ppo_state_gb(cfg).values())
        assert bench.fsdp_state_gb(cfg, 2) - bench.fsdp_state_gb(cfg, 4) == pytest.approx(state / 4, rel=1e-12)
        whole = bench.fsdp_state_gb(cfg, 10 ** 9)  # states -> 0: the root and two layers, fp32
        assert whole == pytest.approx(4 * (bench.n_params(cfg)[0] - (cfg.n_layer - 2) * bench.layer_params(cfg)) / 1e9)


@pytest.mark.slow
def test_gpu_check_runs_every_step_tiny_on_the_cpu(tmp_path):
    """tools/gpu_check.py --tiny, in this process: every step finished and in the JSON it wrote,
    every timing positive and every number finite; the scripts' steps made of their phases (SFT
    steps, PPO iterations = rollout + update), ML-IRL stopped after its first checkpoint and
    resumed, its held-out pairs scored, and the largest forward batches recorded against
    --forward-batch-size; bench's sections beside transformers; the suite's CUDA tests skipped
    here. Then a step that fails, one over its budget and one without the time left are recorded,
    not raised; a script that fails keeps what was measured until then."""
    from tools import gpu_check
    report = gpu_check.main([str(tmp_path / "out"), "--tiny", "--work", str(tmp_path)])
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text()) == json.loads(json.dumps(report))
    steps = report["steps"]
    assert list(steps) == ["cuda_tests", "train_sft", "train_mlirl", "bench", "bench_grad_checkpoint", "train_airl",
                           "bench_large"]
    assert all(s["status"] == "finished" for s in steps.values()), {k: s.get("error") for k, s in steps.items()}

    def walk(x, key=""):  # every number finite, every time positive (the scripts' own metrics aside)
        if isinstance(x, dict):
            for k, v in x.items():
                if k != "metrics":
                    walk(v, k)
        elif isinstance(x, list):
            for v in x:
                walk(v, key)
        elif isinstance(x, float):
            assert math.isfinite(x), key
            assert x > 0 or not (key.endswith("_s") or key == "seconds"), key
    walk(report)
    tests = steps["cuda_tests"]["result"]["tests"]
    assert tests["tests.test_run::test_device_and_dtype"]["outcome"] == "passed"
    assert tests["tests.test_model::test_cuda_bf16_sampling_agrees_with_float32"]["outcome"] == \
        ("passed" if torch.cuda.is_available() else "skipped")
    sft_run, mlirl_run, airl_run = (steps[k]["result"] for k in ("train_sft", "train_mlirl", "train_airl"))
    assert len(sft_run["phases_s"]["sft_step"]) == 3 and sft_run["sft_step_s"] > 0
    for r in (mlirl_run, airl_run):
        assert len(r["ppo_iterations_s"]) == 2 and r["ppo_iteration_s"] in r["ppo_iterations_s"]
        assert r["ppo_iterations_s"][0] == pytest.approx(r["phases_s"]["rollout"][0] + r["phases_s"]["update"][0])
    first, resumed = mlirl_run["calls"]
    assert first["stopped_after_checkpoint"] and not resumed["stopped_after_checkpoint"]
    assert resumed["argv"][-1] == "--resume" and len(mlirl_run["phases_s"]["load_checkpoint"]) == 1
    assert [row["step"] for row in mlirl_run["metrics"]] == [0, 1] and "rm_accuracy_heldout" in mlirl_run["metrics"][1]
    for r in (sft_run, mlirl_run, airl_run):
        assert r["peak_gb"] is None and all(c["peak_gb"] is None for c in r["calls"]) and r["phases_peak_gb"] == {}  # CUDA
        fb = r["forward_batches"]
        assert (fb["forward_batch_size"], fb["micro_batch_size"]) == (4, 2)
        assert fb["largest_no_grad"] == max(fb["largest_no_grad_by_phase"].values()) >= 1
        assert fb["no_grad_within_forward_batch_size"] == (fb["largest_no_grad"] <= 4)
        assert 1 <= fb["largest_with_grad"] <= 2 * 2  # --micro-batch-size 2 (reward model: pairs) a backward pass
    # the held-out pairs' evaluation is a phase of its own: 32 pairs, at most 4 a pass once chunked
    assert 1 <= mlirl_run["forward_batches"]["largest_no_grad_by_phase"]["reward_accuracy"] <= 32
    b = steps["bench"]["result"]
    for side in ("ours", "hf") if transformers else ("ours",):
        assert b["train"][side]["tokens_per_s"] > 0 and b["train"][side]["mfu"] > 0 and b["sample"][side]["s"] > 0
    assert b["sample"]["floor_s"] > 0 and b["ppo"]["grid"][0]["s"] > 0
    assert steps["bench_grad_checkpoint"]["result"]["args"]["grad_checkpoint"]
    assert steps["bench_large"]["result"]["ppo"]["grid"][0]["s"] > 0

    def fails():
        raise ValueError("broken")
    log = {"steps": {}}
    gpu_check.run_step(log, tmp_path / "log.json", tmp_path, "fails", fails, 5, math.inf, False)
    gpu_check.run_step(log, tmp_path / "log.json", tmp_path, "slow", lambda: time.sleep(3), 0.2, math.inf, False)
    gpu_check.run_step(log, tmp_path / "log.json", tmp_path, "late", lambda: 1, 5, time.time() + 1, True)
    assert log["steps"]["fails"]["status"] == "failed" and log["steps"]["fails"]["error"] == "ValueError: broken"
    assert log["steps"]["slow"]["status"] == "timeout" and log["steps"]["slow"]["seconds"] < 2
    assert log["steps"]["late"]["status"] == "skipped"
    nan = [gpu_check.train_sft, ["--steps", "3", "--lr", "inf", "--out", str(tmp_path / "nan")], torch.device("cpu"),
           gpu_check.SHAPES["cpu"]]  # the toy table: a NaN at step 1 stops the run after one step logged
    gpu_check.run_step(log, tmp_path / "log.json", tmp_path, "nan", lambda: gpu_check.run_script(*nan), 30, math.inf, False)
    failed = log["steps"]["nan"]
    assert failed["status"] == "failed" and failed["error"].startswith("RunError: loss is nan at step 1")
    assert failed["result"]["calls"][0]["error"].startswith("RunError") and len(failed["result"]["metrics"]) == 1
    assert len(failed["result"]["phases_s"]["sft_step"]) == 2  # what was measured before the error is kept
    assert json.loads((tmp_path / "log.json").read_text()) == log
