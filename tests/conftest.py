"""Shared test setup.

One torch thread: the tests run tiny tensors, where a second intra-op thread only adds overhead
(about 10x slower on a 2-core machine). Scripts run as subprocesses set their own threads.
The scripts the tests start skip their figures (NANOIRL_NO_PLOTS, nanoirl/logger.py:plot_metrics:
a 20-panel metrics.png costs seconds of CPU a run), except where a test asks for them.
Two tiers: `-m "not slow"` is the quick one, for editing (README); the whole suite is CI's.
"""
import os

import pytest
import torch

os.environ["NANOIRL_NO_PLOTS"] = "1"
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts processes (SIGKILL, torchrun, the documented commands) or "
                                       "trains for many seconds; left out of the quick tier, -m 'not slow'")


@pytest.fixture(scope="module")
def mdp():
    """The default toy MDP (tests only read it)."""
    from toy.mdp import ToyMDP
    return ToyMDP()
