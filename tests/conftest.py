"""Shared test setup.

One torch thread: the tests run tiny tensors, where a second intra-op thread only adds overhead
(about 10x slower on a 2-core machine). Scripts run as subprocesses set their own threads.
"""
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mdp():
    """The default toy MDP (tests only read it)."""
    from toy.mdp import ToyMDP
    return ToyMDP()
