"""pytest configuration shared by every test: offline Hub, one torch thread per test."""

import os

import pytest
import torch

# Nothing is downloaded in tests: every model, tokenizer and dataset is built locally
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def one_thread():
    """Run on one thread: for the tiny models, syncing threads on a loaded machine costs ~10x the compute."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
