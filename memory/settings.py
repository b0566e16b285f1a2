"""The names a stream's memory is configured by: its policies and its compression methods.

Free of torch, so a command line can offer and check them without loading it.
"""

from __future__ import annotations

from typing import Literal, get_args

MemoryPolicyName = Literal["curvature", "uniform", "fifo", "equal"]
POLICIES: tuple[MemoryPolicyName, ...] = get_args(MemoryPolicyName)

CompressionMethod = Literal["pool", "value_norm"]
COMPRESSION_METHODS: tuple[CompressionMethod, ...] = get_args(CompressionMethod)
