"""The allocator settings deduped_shards runs under: nested use keeps them until the outer use ends, and they are
safe to call where glibc is missing. (Their effect on a stage's peak is measured by benchmarks/dedup_memory.py and
bounded by llm_pipeline_tests/stages/test_deduped_shards_memory.py.)"""

from llm_pipeline import memory


def test_large_frees_returned_nests_and_releases(monkeypatch):
    calls = []

    class Libc:
        def mallopt(self, param, value):
            calls.append((param, value))

        def malloc_trim(self, pad):
            calls.append(("trim", pad))

    monkeypatch.setattr(memory, "_libc", Libc())  # records the calls; the real glibc is used everywhere else
    with memory.large_frees_returned():
        with memory.large_frees_returned():
            memory.release_freed_memory()
        assert memory._depth == 1
    assert memory._depth == 0
    assert calls == [(-3, 128 * 1024), ("trim", 0), (-3, 32 * 1024 * 1024)]


def test_without_glibc_the_helpers_do_nothing(monkeypatch):
    monkeypatch.setattr(memory, "_libc", False)
    with memory.large_frees_returned():
        memory.release_freed_memory()
    assert memory._depth == 0
