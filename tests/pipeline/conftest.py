"""The local SLURM cluster for the tests that submit to it (tests/support/slurm_cluster.py)."""

from tests.support.slurm_cluster import (  # noqa: F401  (the session SLURM cluster, the chain it runs)
    chain_here,
    shared_tmp_path,  # tmp_path: for a slurm test, a folder its jobs' nodes may share
    slurm_cluster,
    two_nodes,
)
