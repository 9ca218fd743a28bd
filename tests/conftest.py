"""Test-session settings.

Torch ops run on one thread: the networks in these tests are small, and on a 2-core machine that is
busy (CI, or several jobs at once) two spinning intra-op threads made one training test 7x slower
(59 s against 9 s measured). The limit is set through OMP_NUM_THREADS before torch is imported,
not with torch.set_num_threads: an explicit thread count made torch's OpenMP pool assert ("Invalid
thread pool") in the forked child of test_torchff's fork test. The torch force field keeps its own
chunk threads (its ``threads=``).
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
