"""Freed heap memory goes back to the system: glibc's malloc_trim really lowers the resident size, the
trimmer calls it only when due, and the engine's ingest calls the trimmer."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from tiny_adapter import SyntheticFrames, synthetic_frame
from transformers import LlamaForCausalLM

from streamer.engine import Engine, EngineConfig
from streamer.engine_config import MemoryConfig
from streamer.heap import HeapTrimmer, trim_available

glibc = pytest.mark.skipif(not trim_available(), reason="the C library has no malloc_trim (not glibc)")

# In a fresh interpreter: 400 chunks of 100 KB (below glibc's mmap threshold, so on the heap), written so
# their pages are resident, then freed, with free()'s own trimming of the heap's top turned off
# (M_TRIM_THRESHOLD), as it is in effect for free space below chunks still in use. Prints the resident MiB
# after the frees and after a trim.
FRAGMENTED = textwrap.dedent(
    """
    import ctypes, ctypes.util
    from streamer.heap import trim_now

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD

    def resident_mib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    chunks = [libc.malloc(100_000) for _ in range(400)]
    for chunk in chunks:
        ctypes.memset(chunk, 1, 100_000)
    for chunk in chunks:
        libc.free(chunk)
    freed = resident_mib()
    assert trim_now()
    print(freed, resident_mib())
    """
)


@glibc
def test_a_trim_gives_freed_heap_pages_back() -> None:
    done = subprocess.run([sys.executable, "-c", FRAGMENTED], capture_output=True, text=True, check=True)
    freed, trimmed = (float(value) for value in done.stdout.split())
    assert freed - trimmed > 30, (freed, trimmed)  # of the 40 MB freed, nearly all leaves


@glibc
def test_the_trimmer_trims_only_when_due() -> None:
    now = [100.0]
    trimmer = HeapTrimmer(10.0, clock=lambda: now[0])
    assert not trimmer.maybe_trim()  # the interval counts from its creation
    now[0] = 109.9
    assert not trimmer.maybe_trim()
    now[0] = 110.0
    assert trimmer.maybe_trim() and trimmer.trims == 1
    now[0] = 115.0
    assert not trimmer.maybe_trim()
    now[0] = 120.5
    assert trimmer.maybe_trim() and trimmer.trims == 2 and trimmer.seconds > 0
    off = HeapTrimmer(0.0, clock=lambda: now[0])
    now[0] = 10**6
    assert not off.maybe_trim() and off.trims == 0
    with pytest.raises(ValueError, match="every_s"):
        HeapTrimmer(-1.0)


@glibc
def test_ingest_trims_the_heap_when_due(tiny_model_one_thread: LlamaForCausalLM) -> None:
    def engine(every_s: float) -> Engine:
        config = EngineConfig(memory=MemoryConfig(budget_tokens=512, heap_trim_every_s=every_s))
        made = Engine(SyntheticFrames(tiny_model_one_thread), config)
        made.add_stream("cam")
        return made

    trimming, keeping = engine(1e-9), engine(0.0)
    for index in range(3):
        trimming.push_frame("cam", synthetic_frame(index))
        keeping.push_frame("cam", synthetic_frame(index))
    assert trimming.heap.trims == 3
    assert keeping.heap.trims == 0
    assert EngineConfig().memory.heap_trim_every_s == 5.0


def test_no_glibc_means_no_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    import streamer.heap as heap

    monkeypatch.setattr(heap, "_TRIM", None)
    assert not heap.trim_now() and not heap.trim_available()
    assert not HeapTrimmer(1e-9).maybe_trim()
