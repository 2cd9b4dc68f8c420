"""Content fingerprints of each domain's sources, so a change in one domain re-runs that domain only.

A local source's fingerprint hashes every matching file's relative path and bytes (xxh3, streamed). A Hugging Face
dataset source contributes its id/config/split, since it cannot be observed offline; a local dataset folder given as
`hf_dataset` is hashed like a path.
"""

from __future__ import annotations

from pathlib import Path

import xxhash

from llm_pipeline.config import PipelineConfig

CHUNK = 1 << 20


def _files(root: Path, glob: str) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(glob) if p.is_file() and not p.name.startswith("."))


def domain_fingerprint(cfg: PipelineConfig, domain: str) -> str:
    h = xxhash.xxh3_128()
    for source in cfg.domains[domain].sources:
        if source.path is not None:
            root = cfg.resolve(source.path)
            h.update(f"path:{source.path}:{source.glob}\n".encode())
            for f in _files(root, source.glob):
                h.update(f"{f.relative_to(root) if root.is_dir() else f.name}\n".encode())
                try:
                    with open(f, "rb") as fh:
                        while block := fh.read(CHUNK):
                            h.update(block)
                except OSError as exc:  # unreadable files change the fingerprint by their error, not a crash
                    h.update(f"unreadable:{type(exc).__name__}\n".encode())
        else:
            local = cfg.resolve(source.hf_dataset)
            h.update(f"hf:{source.hf_dataset}:{source.hf_config}:{source.split}:{source.text_field}\n".encode())
            for f in _files(local, "**/*") if local.exists() else []:
                h.update(f.read_bytes())
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
