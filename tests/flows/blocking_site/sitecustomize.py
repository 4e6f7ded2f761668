"""Imported at start-up by every Python process whose PYTHONPATH holds this folder (a test sets it).

A `stages.prepare` process then blocks on opening the FIFO named by ROBUST_RLHF_TEST_BLOCK, which
the test never writes: the stage cannot finish before the flow's deadline, whatever the machine's
speed, so the test can assert what the flow guarantees when a stage runs past it.
"""

import os
import sys

if os.environ.get("ROBUST_RLHF_TEST_BLOCK") and "stages.prepare" in " ".join(getattr(sys, "orig_argv", [])):
    with open(os.environ["ROBUST_RLHF_TEST_BLOCK"]) as fifo:
        fifo.read()
