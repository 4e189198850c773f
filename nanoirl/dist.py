"""
Data parallelism with torchrun, in PyTorch's own engine: torch.distributed, DDP and FSDP2.

    torchrun --nproc_per_node 8 train_mlirl.py --model pythia-1b ...          # DDP: replicated models
    torchrun --nproc_per_node 8 train_mlirl.py --model pythia-6.9b --fsdp ... # FSDP2: sharded per layer

`python script.py` alone is one rank, every function here is then the identity (or a no-op), and
`wrap` returns the model itself: the algorithm files never hear of ranks. The rule that makes N
ranks compute what one process computes, to rounding:

  * Every rank holds the whole data set, the same flags and the same generators (seeded from
    --seed), so every random index (batches, PPO's permutations, the pairs' shuffles) is drawn
    identically everywhere: the global batch is the same on every rank.
  * A wrapped model (`wrap` -> `Parallel`) takes the global batch in each call of logprobs,
    state_scores and sample, computes this rank's rows (`bounds`: rows r B/N .. (r+1) B/N), and
    returns every rank's rows to every rank (`gather`), differentiably when gradients are on: its
    backward sums the gradients of the gathered rows over ranks and keeps this rank's. Every
    rank then computes the same loss on the whole batch, and DDP's (or FSDP2's) average of the
    weights' gradients over ranks is the gradient of that loss. A non-finite loss is non-finite on
    every rank, so every rank skips the step alike; every rank runs the same micro-batches, so
    each forward and backward (a collective) is joined by all.
  * Sampling is rank-independent: a token is argmax(p / q), q ~ Exp(1), which is exactly how
    torch.multinomial draws one sample; every rank draws the noise of the *global* batch from the
    shared generator and keeps its own rows (policy.sample_tokens). The samples are those of one
    process on the whole batch, bit for bit. Generation stops when every row of every rank has
    ended (`all_done`), so ranks never wait on a collective another rank skipped, and the
    generator advances the same on every rank.
  * --micro-batch-size counts a rank's rows: the global micro-batch is N times it (`per_rank`).
DDP averages gradients only for calls through `forward`: Parallel dispatches logprobs and
state_scores through it (calling the inner module would silently skip the gradient all-reduce);
FSDP2 registers those methods and `sample` as forward methods. Checkpoints are gathered to full
weights, one tensor at a time, on rank 0's CPU, and written by rank 0 (resume.save_checkpoint): one
file, the same for every rank count. Every script ends its process group on its way out (close,
from run.script).
"""
import contextlib
import datetime
import inspect
import os
import sys

import torch
import torch.distributed as td
import torch.nn as nn

METHODS = ("logprobs", "sample", "state_scores")  # the policy and scalar-model interface (policy.py)


def init(device_type):
    """Start the process group when launched by torchrun (RANK in the environment): nccl on CUDA,
    gloo on CPU, with a timeout (NANOIRL_DIST_TIMEOUT seconds, default 600), so that a rank stuck
    in a collective fails instead of hanging. Returns the local rank (0 without torchrun). A bad
    NANOIRL_DIST_TIMEOUT is a ValueError naming it. close() ends the group (run.script does)."""
    if "RANK" not in os.environ or td.is_initialized():
        return int(os.environ.get("LOCAL_RANK", 0))
    value = os.environ.get("NANOIRL_DIST_TIMEOUT", "600")
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < 10 ** 9:  # nan compares false; timedelta overflows far above 10**9
        raise ValueError(f"NANOIRL_DIST_TIMEOUT={value!r}: expected the process-group timeout in seconds, "
                         "a number > 0 (default 600)")
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    td.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=seconds))
    if td.get_rank() != 0:  # rank 0 prints the progress; every rank still prints its errors
        sys.stdout = open(os.devnull, "w")
    return local


def close():
    """End the process group, if one was started: on every path out of a script (run.script,
    which then leaves with os._exit: with the group destroyed, the interpreter's teardown still
    aborted a finished rank now and then, SIGABRT "terminate called without an active exception").
    It waits for no other rank, so that a rank stopping on an error does not hang here."""
    if td.is_initialized():
        td.destroy_process_group()


def is_collective_failure(error):
    """Whether an exception is a collective that failed because another rank is gone or stuck:
    torch's DistError (nccl), or gloo's RuntimeError ("Connection closed by peer", "Timed out")."""
    return isinstance(error, td.DistError) or isinstance(error, RuntimeError) and "gloo" in str(error)


def rank():
    return td.get_rank() if td.is_initialized() else 0


def world():
    return td.get_world_size() if td.is_initialized() else 1


def is_main():
    return rank() == 0


def per_rank(micro_batch_size):
    """The global micro-batch whose shares are --micro-batch-size rows on each rank (None: one)."""
    return micro_batch_size and micro_batch_size * world()


def bounds(n, r=None):
    """Rows [lo, hi) of a global batch of n rows that rank r (default: this one) computes on."""
    r, w = rank() if r is None else r, world()
    return r * n // w, (r + 1) * n // w


def gather(x):
    """Every rank's rows of a batch, in rank order, on every rank (tuples and dicts too)."""
    if isinstance(x, (tuple, list)):
        return type(x)(gather(v) for v in x)
    if isinstance(x, dict):
        return {k: gather(v) for k, v in x.items()}
    if world() == 1:
        return x
    n = torch.tensor([len(x)], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world())]
    td.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[:len(x)] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    td.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def all_done(done):
    """True when every row of every rank is done (generation stops on all ranks at one step)."""
    flag = done.all()
    if world() > 1:
        flag = flag.to(torch.int32)
        td.all_reduce(flag, op=td.ReduceOp.MIN)
    return bool(flag)


def _device():
    return torch.device("cuda", torch.cuda.current_device()) if td.get_backend() == "nccl" else torch.device("cpu")


def broadcast(obj):
    """Rank 0's value of a picklable object, on every rank."""
    if world() == 1:
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0, device=_device())
    return box[0]


def on_main(fn):
    """Run fn() on rank 0 only and give every rank its result; an exception there is raised on
    every rank, so that all stop with the same one-line error instead of waiting on rank 0."""
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 -- re-raised below, on every rank
            error = e
    if world() > 1:
        result, error = broadcast((result, error))
    if error is not None:
        raise error
    return result


# ---- wrapping models -----------------------------------------------------------------------------
class Dispatch(nn.Module):
    """A module whose forward calls one of the model's methods: DDP averages gradients only for
    computations that run through forward, so logprobs and state_scores must come this way."""
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, method, *args, **kwargs):
        return getattr(self.model, method)(*args, **kwargs)


class _Gathered(torch.autograd.Function):
    """Every rank's rows of a global batch of n rows, from this rank's own (forward: gather).
    Backward: every rank computes the same loss on the gathered rows, so each rank's gradient
    with respect to them is the loss's; summed over ranks (all-reduce) it is N times that, and this
    rank keeps its rows. DDP and FSDP2 then average the weights' gradients over the N ranks: the
    gradient of the loss, as one process computes it on the whole batch."""
    @staticmethod
    def forward(ctx, x, n):
        ctx.rows = bounds(n)
        return gather(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        td.all_reduce(grad)
        return grad[ctx.rows[0]:ctx.rows[1]], None


class Parallel:
    """A model under torchrun with the policy and scalar-model interface (policy.py) on the global
    batch: each call takes the whole batch on every rank, computes this rank's rows (`bounds`) and
    returns every rank's rows to every rank, differentiably when gradients are on (`_Gathered`).
    So the losses of the algorithm files, written for one process, see the whole batch on every
    rank, and every rank decides alike (a NaN on one rank's rows is a NaN on all). Sampling
    draws the noise of the whole batch and keeps this rank's rows (policy.sample_tokens), and
    stops when every row of every rank has ended (all_done). Everything else (parameters,
    config, ...) is the model's own; state_dict and load_state_dict take whole tensors."""
    def __init__(self, model, ddp=False):
        self.module = model  # FSDP2: sharded in place; its methods are registered forward methods
        self.ddp = None
        if ddp:
            ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
            # the buffers (allowed-token masks) are equal on every rank: no broadcast before each forward;
            # torch 2.13 renamed broadcast_buffers (which then warns) to forward_sync_buffers
            DDP = nn.parallel.DistributedDataParallel
            new = "forward_sync_buffers" in inspect.signature(DDP).parameters
            self.ddp = DDP(Dispatch(model), device_ids=ids, **{"forward_sync_buffers" if new else "broadcast_buffers": False})

    def _call(self, method, *args, **kwargs):
        return self.ddp(method, *args, **kwargs) if self.ddp else getattr(self.module, method)(*args, **kwargs)

    def _on_rows(self, method, prompts, prompt_mask, responses, *args, **kwargs):
        lo, hi = bounds(len(prompts))
        out = self._call(method, prompts[lo:hi], prompt_mask[lo:hi], responses[lo:hi], *args, **kwargs)
        return _Gathered.apply(out, len(prompts)) if torch.is_grad_enabled() else gather(out)

    def logprobs(self, prompts, prompt_mask, responses, *args, **kwargs):
        return self._on_rows("logprobs", prompts, prompt_mask, responses, *args, **kwargs)

    def state_scores(self, prompts, prompt_mask, responses):
        return self._on_rows("state_scores", prompts, prompt_mask, responses)

    def sample(self, prompts, prompt_mask, *args, **kwargs):
        lo, hi = bounds(len(prompts))
        return gather(self._call("sample", prompts[lo:hi], prompt_mask[lo:hi], *args, rows=(lo, len(prompts)),
                                 all_done=all_done, **kwargs))

    def state_dict(self):
        return state_dict(self.module)

    def load_state_dict(self, sd):
        load_state_dict(self.module, sd)

    def __getattr__(self, name):
        return getattr(self.module, name)


def wrap(model, fsdp=False, trained=True):
    """A model for this process: itself on one rank; on several, a Parallel model, whose weights
    are replicated (DDP: gradients all-reduced; a frozen model: nothing to reduce) or, with fsdp, a
    GPT's sharded over the ranks (FSDP2: each transformer layer and the rest, gathered one layer at
    a time for every forward). The toy's tables are always replicated (a few kB)."""
    global _sharding
    if world() == 1:
        return model
    if fsdp and hasattr(model, "gpt_neox"):
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
        _sharding = True
        for layer in model.gpt_neox.layers:
            fully_shard(layer)
        fully_shard(model)
        for name in METHODS:
            if hasattr(model, name):
                register_fsdp_forward_method(model, name)
        if hasattr(model, "sample"):
            model.sample = _whole_while_sampling(model, model.sample)
        return Parallel(model)
    return Parallel(model, ddp=trained)


# FSDP2's modules are imported only once a model is sharded (wrap with fsdp): DDP and one process
# need none of them, and run on a torch that has no FSDP2 (requirements.txt)
_sharding = False
FSDP2_TORCH = "2.8"  # fully_shard is public from torch 2.6; FSDPModule.set_reshard_after_forward from 2.8


def has_fsdp2():
    """Whether this torch has every piece of FSDP2 that wrap(fsdp=True) uses."""
    try:
        from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method  # noqa: F401
    except ImportError:
        return False
    return hasattr(FSDPModule, "set_reshard_after_forward")


def _is_dtensor(x):
    """Whether x is a sharded tensor of FSDP2 (never, unless a model was sharded)."""
    if not _sharding:
        return False
    from torch.distributed.tensor import DTensor
    return isinstance(x, DTensor)


def _whole_while_sampling(model, sample):
    """FSDP2 gathers each layer for a forward and frees it after; while sampling, that would be one
    all-gather per layer per token. Keep the gathered weights for the whole call instead (resharding
    off), then free them: the memory of one whole model per GPU while sampling."""
    def whole(*args, **kwargs):
        model.set_reshard_after_forward(False)
        try:
            return sample(*args, **kwargs)
        finally:
            model.set_reshard_after_forward(True)
            model.reshard()
    return whole


def unwrap(model):
    """The model behind a Parallel wrapper (an FSDP2 model sharded in place)."""
    return model.module if isinstance(model, Parallel) else model


def is_sharded(model):
    return any(_is_dtensor(p) for p in unwrap(model).parameters())


@contextlib.contextmanager
def full_weights(model):
    """Within the block, an FSDP2 model's weights are whole on every rank, so code that reaches
    into its modules (toy.gpt.prefix_tree_logprobs) runs as on one process."""
    sharded = is_sharded(model)
    if sharded:
        model.unshard()
    try:
        yield unwrap(model)
    finally:
        if sharded:
            model.reshard()


def _full(x, to_main=False):
    if _is_dtensor(x):
        t = x.full_tensor()  # a collective: every rank gets the whole tensor, on its device
        return t if not to_main else t.cpu() if is_main() else None  # the others' copy is freed at once
    if isinstance(x, dict):
        return {k: _full(v, to_main) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_full(v, to_main) for v in x)
    return x


def state_dict(obj, to_main=False):
    """obj.state_dict() with every sharded tensor gathered whole (a collective under FSDP2), on
    every rank. to_main (checkpoints): rank 0 alone keeps the whole tensors, on its CPU, and the
    other ranks get None. The tensors are gathered one at a time, so that beyond its shards a GPU
    holds one whole tensor, not every model (6.9b's four models would need ~106 GB per GPU)."""
    sd = _full(unwrap(obj).state_dict(), to_main)
    return sd if not to_main or is_main() else None


def load_state_dict(obj, sd):
    """obj.load_state_dict(sd) from whole tensors, sharding them as obj's own are sharded (a model,
    or an optimizer whose parameters are FSDP2's DTensors)."""
    obj = unwrap(obj)
    if _sharding:
        from torch.distributed.tensor import distribute_tensor
    if isinstance(obj, nn.Module):
        mine = obj.state_dict()
        sd = {k: distribute_tensor(v.to(mine[k].device), mine[k].device_mesh, mine[k].placements)
              if _is_dtensor(mine.get(k)) else v for k, v in sd.items()}
        obj.load_state_dict(sd)
        return
    obj.load_state_dict(sd)  # an optimizer: its moments are loaded whole, then sharded like their weights
    if hasattr(obj, "state"):
        for p, st in obj.state.items():
            if _is_dtensor(p):
                for k, v in st.items():
                    if torch.is_tensor(v) and not _is_dtensor(v) and v.shape == p.shape:
                        st[k] = distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
