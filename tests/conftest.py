"""pytest configuration shared by every test: offline Hub, one torch thread."""

import os

import pytest
import torch

# Nothing is downloaded in tests: every model, tokenizer and dataset is built locally
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Run on one thread: for the tiny models, syncing threads on a loaded machine costs ~10x the compute. For the
    whole session, so that module-scoped fixtures (computed before any test's own fixtures) compute on the same
    thread count as the tests that compare with them: a sum over 2 threads rounds differently from one over 1."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
