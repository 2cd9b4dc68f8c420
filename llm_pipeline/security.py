"""Where a config may make the pipeline read and write, and how models are loaded without running foreign code.

A config is data that someone else may have written. A source path of ``../../etc``, an absolute path, or a symlink
inside a corpus folder that points at ``~/.ssh`` must not pull files into a training corpus, and a ``data_dir``
elsewhere must not make stages write (and replace) folders outside the project. The allowed roots are:

- the config's root (the folder relative paths resolve against: the working folder, or ``root=`` of load_config),
- the folder holding the config file,
- every folder the config lists under ``allowed_roots``.

Paths are compared after resolving every symlink, so a link inside a root that points outside it is outside.
A source outside the roots becomes a ``path_outside_root`` quarantine record (the other sources still run); a
``data_dir`` outside them stops the stage with a ``ConfigError`` before anything is written.

Model weights are loaded from safetensors only (a pickled ``.bin`` runs code when unpickled) and
``trust_remote_code`` is off unless the config turns it on::

    model = load_pretrained(AutoModelForCausalLM, folder, trust_remote_code=cfg.base_checkpoint.trust_remote_code)
    model = load_adapter(base, adapter_folder)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llm_pipeline.config import ConfigError, PipelineConfig

OUTSIDE_ROOT = "path_outside_root"


class PathOutsideRoot(ConfigError):
    """A path from a config resolves (symlinks followed) outside every allowed root."""


def real(path: str | Path) -> Path:
    """The path with every symlink resolved, also when its last parts do not exist (yet)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def allowed_roots(cfg: PipelineConfig) -> list[Path]:
    roots = [cfg.root]
    if cfg.config_path is not None:
        roots.append(Path(cfg.config_path).parent)
    roots += [cfg.resolve(r) for r in cfg.allowed_roots]
    out: list[Path] = []
    for r in roots:
        resolved = real(r)
        if resolved not in out:
            out.append(resolved)
    return out


def is_inside(path: str | Path, roots: list[Path]) -> bool:
    resolved = real(path)
    return any(resolved == r or resolved.is_relative_to(r) for r in roots)


def outside_detail(path: str | Path, roots: list[Path]) -> str:
    resolved = real(path)
    shown = f"{path} (resolves to {resolved})" if str(resolved) != str(path) else str(path)
    return f"{shown} is outside the allowed roots ({', '.join(map(str, roots))}); list its folder under allowed_roots to use it"


def confine(cfg: PipelineConfig, path: str | Path, what: str) -> Path:
    """The config path made absolute, or PathOutsideRoot naming the key when it escapes every allowed root."""
    resolved = cfg.resolve(path)
    roots = allowed_roots(cfg)
    if not is_inside(resolved, roots):
        where = cfg.config_path or "config"
        raise PathOutsideRoot(f"{where}: {what}: {OUTSIDE_ROOT}: {outside_detail(resolved, roots)}")
    return resolved


def check_data_dir(cfg: PipelineConfig) -> Path:
    return confine(cfg, cfg.data_dir, "data_dir")


def looks_like_path(value: str) -> bool:
    """A `hf_dataset` value meant as a local path rather than a hub id (`org/name`)."""
    return value.startswith(("/", "~", ".")) or ".." in Path(value).parts


# ---------------------------------------------------------------- model loading
def load_pretrained(cls: Any, where: str | Path, *, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` with safetensors required and remote code off unless the caller passes the config's
    switch. GGUF files (``gguf_file=``) are a plain tensor format too, and carry no safetensors file to ask for."""
    if kwargs.get("gguf_file") is None:
        kwargs["use_safetensors"] = True
    return cls.from_pretrained(str(where), trust_remote_code=trust_remote_code, **kwargs)


def load_adapter(base: Any, folder: str | Path, **kwargs: Any) -> Any:
    """A PEFT adapter from ``adapter_model.safetensors``; PEFT would fall back to a pickled ``adapter_model.bin``."""
    from peft import PeftModel

    folder = Path(folder)
    if not (folder / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(f"{folder}: no adapter_model.safetensors (pickled adapter weights are not loaded)")
    # PEFT reads the safetensors file whenever it exists, which was just checked.
    return PeftModel.from_pretrained(base, str(folder), **kwargs)
