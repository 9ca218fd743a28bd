"""Test-session settings.

Torch ops run on one thread: the networks in these tests are small, and on a 2-core machine that is
busy (CI, or several jobs at once) two spinning intra-op threads made one training test 7x slower
(59 s against 9 s measured). The torch force field keeps its own chunk threads (its ``threads=``).
"""
import torch

torch.set_num_threads(1)
