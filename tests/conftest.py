"""Shared test settings."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # the nets under test run thousands of tiny ops; on a shared 2-core CI box every intra-op
    # parallel region waits for a descheduled worker thread (measured: 7x slower under load)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
