"""Content fingerprints of each domain's sources, so a change in one domain re-runs that domain only.

A local source's fingerprint hashes the relative path and bytes (xxh3, streamed) of exactly the files the reader
reads: the same walk (`readers.iter_files`), the same allowed roots, the same quarantines. A path outside the roots,
a link out of the corpus or a file that vanished contributes its reason, never its bytes: the fingerprint opens
nothing the reader would not. A Hugging Face dataset source contributes its id/config/split, since it cannot be
observed offline; a local dataset folder given as `hf_dataset` is hashed like a path.
"""

from __future__ import annotations

from pathlib import Path

import xxhash

from llm_pipeline.config import PipelineConfig

CHUNK = 1 << 20


def _hash_tree(h: "xxhash.xxh3_128", cfg: PipelineConfig, root: Path, glob: str, *, hub_id: bool = False) -> None:
    from llm_pipeline.curation.readers import Quarantined, iter_files
    from llm_pipeline.security import OUTSIDE_ROOT, allowed_roots, is_inside

    roots = allowed_roots(cfg)
    if not is_inside(root, roots):
        h.update(f"{OUTSIDE_ROOT}\n".encode())  # not even probed for existence, as the reader does
        return
    if root.is_file():
        entries = [root]
    elif root.is_dir():
        entries = iter_files(root, glob, ".", roots)  # relative: moving the project keeps the hash
    else:
        h.update(b"absent\n" if not hub_id else b"")
        return
    for entry in entries:
        if isinstance(entry, Quarantined):
            h.update(f"quarantined:{entry.reason}:{entry.source}\n".encode())
            continue
        h.update(f"{entry.relative_to(root) if entry != root else entry.name}\n".encode())
        try:
            with open(entry, "rb") as fh:
                while block := fh.read(CHUNK):
                    h.update(block)
        except OSError as exc:  # vanished or unreadable: the reader quarantines it; here it changes the hash
            h.update(f"unreadable:{type(exc).__name__}\n".encode())


def domain_fingerprint(cfg: PipelineConfig, domain: str) -> str:
    from llm_pipeline.security import looks_like_path

    h = xxhash.xxh3_128()
    for source in cfg.domains[domain].sources:
        if source.path is not None:
            h.update(f"path:{source.path}:{source.glob}\n".encode())
            _hash_tree(h, cfg, cfg.resolve(source.path), source.glob)
        else:
            h.update(f"hf:{source.hf_dataset}:{source.hf_config}:{source.split}:{source.text_field}\n".encode())
            local = cfg.resolve(source.hf_dataset)
            if looks_like_path(source.hf_dataset) or local.exists():
                _hash_tree(h, cfg, local, "**/*", hub_id=True)
        h.update(f"licence:{source.licence}:{source.max_documents}:{source.text_field}\n".encode())
    return h.hexdigest()


def fingerprints(cfg: PipelineConfig) -> dict[str, str]:
    return {d: domain_fingerprint(cfg, d) for d in cfg.domain_names}


def built_from(cfg: PipelineConfig, domain: str) -> str | None:
    """The source fingerprint the domain's current raw_corpus output was built from (None when not built)."""
    from llm_pipeline.io import MANIFEST, read_json

    manifest = cfg.data_path / "raw_corpus" / domain / MANIFEST
    if not manifest.exists():
        return None
    return read_json(manifest).get("inputs", {}).get("sources")


def stale_domains(cfg: PipelineConfig) -> list[str]:
    """Domains whose sources changed since their raw_corpus output was built (or that were never built)."""
    return [d for d in cfg.domain_names if built_from(cfg, d) != domain_fingerprint(cfg, d)]
