"""Benchmark-wide setup: every row runs on the same memory allocator settings.

A run training on the CPU tunes glibc's malloc for its process (``grokfast_train/heap.py``: freed
blocks reused, not faulted in afresh). That is process-wide, so within one pytest process the rows
measured after the first trainer row would run tuned and the rows before it not. Tuning once, before
any row, gives every row -- the peers included -- the same allocator: a ratio compares the steps,
not the allocator.
"""

from grokfast_train import heap

heap.keep_freed_memory()
