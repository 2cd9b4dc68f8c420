"""How much memory this process has used: the peak resident set, read without importing anything heavy (the
curation benchmarks measure processes that never load torch)."""

from __future__ import annotations

import resource
from contextlib import contextmanager


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB: VmHWM (its own memory map's high-water mark) on Linux.

    ru_maxrss is the fallback only: Linux carries it across fork and exec, so a process started by a large parent (a
    Dagster run worker, a benchmark's child) would report at least the parent's size whatever it uses itself.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


_libc: object = None  # glibc once looked up; False where there is none
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
_depth = 0


def _glibc():
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim, _libc.mallopt  # noqa: B018 (both, or neither)
        except (OSError, AttributeError):
            _libc = False
    return _libc


def release_freed_memory() -> None:
    """Return the pages of freed heap memory to the system now (glibc's ``malloc_trim``; a no-op elsewhere), between
    the steps of a large computation: a step's freed arrays then do not sit in resident memory under the next one's."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)


@contextmanager
def large_frees_returned():
    """While inside, arrays over 128 KB are mapped on their own and unmapped when freed (glibc's mmap threshold fixed
    at its default; a no-op elsewhere).

    By default glibc raises the threshold to the size of each large block freed, up to 32 MB, and serves later arrays
    below it from its heap, whose freed pages stay resident: deduped_shards' driver frees and allocates arrays of a
    few bytes per document step after step, so its peak then grew with the corpus beyond what any step holds (1.27x
    from 100k to 1M documents, 1.18x with the threshold fixed). On leaving, the threshold is set to 32 MB, where the
    default behaviour ends up in a process that has freed large arrays (later stages in the same process, training
    included, keep reusing heap memory for their tensors)."""
    global _depth
    libc = _glibc()
    if libc and _depth == 0:
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if libc and _depth == 0:
            libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
