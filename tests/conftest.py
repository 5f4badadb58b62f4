"""Shared test settings."""

from __future__ import annotations

import pytest
import ray
import torch
from ray.cluster_utils import Cluster


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # the nets under test run thousands of tiny ops; on a shared 2-core CI box every intra-op
    # parallel region waits for a descheduled worker thread (measured: 7x slower under load)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def cluster():
    """Two Ray nodes of one CPU each on this machine; yields the cluster and its second node
    (a test may remove it: a lost node). Variables set before it are seen by both nodes."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = c.add_node(num_cpus=1)
    c.wait_for_nodes()
    try:
        yield c, worker
    finally:
        ray.shutdown()
        c.shutdown()
