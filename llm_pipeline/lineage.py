"""What made an output: walk the `_manifest.json` chain from an output folder back to the sources.

    llm-pipeline lineage data/dpo_model

prints, for every stage upstream, the output's content hash (the DVC hash), the config and its fingerprint, the code
version and the seed, and for the curation stages each domain's shards with their hashes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_pipeline.io import MANIFEST, dvc_hash, read_json, shard_files
from llm_pipeline.stages import STAGES


def _node(data_dir: Path, name: str, domain: str | None) -> dict[str, Any]:
    folder = data_dir / name / domain if domain else data_dir / name
    if not (folder / MANIFEST).exists():
        return {"stage": name, "domain": domain, "path": str(folder), "missing": True}
    m = read_json(folder / MANIFEST)
    node = {
        "stage": name,
        "domain": domain,
        "path": str(folder),
        "hash": dvc_hash(folder),
        "config": m.get("config"),
        "config_fingerprint": m.get("config_fingerprint"),
        "code_version": m.get("code_version"),
        "seed": m.get("seed"),
        "inputs": m.get("inputs", {}),
    }
    adapter = folder / "adapter_config.json"
    if adapter.is_file():
        # Relative to the project root (the runner writes it so): the same in every clone.
        node["base_model"] = read_json(adapter).get("base_model_name_or_path")
    if STAGES[name].partitioned:
        node["shards"] = [{"file": str(p.relative_to(folder)), "md5": dvc_hash(p)} for p in shard_files(folder)]
    return node


def lineage(output: Path) -> list[dict[str, Any]]:
    """Every upstream output of `output` (itself first), each once, with what the manifest recorded."""
    output = Path(output).resolve()
    manifest = read_json(output / MANIFEST)
    name, domain = manifest["stage"], manifest.get("domain")
    data_dir = output.parent.parent if domain else output.parent
    seen: set[tuple[str, str | None]] = set()
    nodes: list[dict[str, Any]] = []
    stack = [(name, domain)]
    while stack:
        key = stack.pop(0)
        if key in seen:
            continue
        seen.add(key)
        node = _node(data_dir, *key)
        nodes.append(node)
        if node.get("missing"):
            continue
        for dep in STAGES[key[0]].deps:
            if dep in STAGES[key[0]].optional and dep not in (node.get("inputs") or {}):
                continue  # an optional input this output was built without
            if STAGES[dep].partitioned and key[1] is None:
                domains = sorted({k.split("/", 1)[1] for k in node["inputs"] if k.startswith(dep + "/")})
                stack += [(dep, d) for d in domains]
            else:
                stack.append((dep, key[1] if STAGES[dep].partitioned else None))
    return nodes


def render(nodes: list[dict[str, Any]]) -> str:
    lines = []
    for n in nodes:
        label = n["stage"] + (f"[{n['domain']}]" if n["domain"] else "")
        if n.get("missing"):
            lines.append(f"{label}: not materialized ({n['path']})")
            continue
        lines.append(f"{label}  {n['hash']}")
        lines.append(f"    path {n['path']}")
        lines.append(f"    config {n['config']} (fingerprint {n['config_fingerprint']}), code {n['code_version']}, seed {n['seed']}")
        if n.get("base_model"):
            lines.append(f"    adapter on base model {n['base_model']}")
        for dep, h in sorted(n["inputs"].items()):
            lines.append(f"    input {dep}: {h}")
        for s in n.get("shards", []):
            lines.append(f"    shard {s['file']}  md5 {s['md5']}")
    return "\n".join(lines)
