"""``nayer-edge`` under torchrun with rank 1's clock started ``NAYER_EDGE_TEST_CLOCK_SKEW`` seconds before
rank 0's, as when one process takes longer to import: the time budget must still end every rank at the
same step (tests/test_distributed.py)."""

import os

import nayer_edge

if os.environ.get("RANK") == "1":
    nayer_edge.IMPORTED_AT -= float(os.environ["NAYER_EDGE_TEST_CLOCK_SKEW"])

from nayer_edge.cli import main  # after the clock is moved

main()
