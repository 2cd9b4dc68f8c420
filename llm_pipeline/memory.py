"""How much memory this process has used: the peak resident set, read without importing anything heavy (the
curation benchmarks measure processes that never load torch)."""

from __future__ import annotations

import resource


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
