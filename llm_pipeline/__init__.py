"""llm-pipeline: raw domain documents to an aligned, evaluated custom language model.

Importing the package makes the process offline by default: nothing is fetched from a model or data hub at run
time unless the user sets these variables to something else before starting.
"""

import os

__version__ = "0.1.0"

# Offline defaults. setdefault, so a user who exports HF_HUB_OFFLINE=0 (or WANDB_MODE=online) still wins.
_OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    # tldextract (inside Presidio's e-mail recognizer) would fetch the public suffix list; "" = built-in list.
    "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "",
    "TOKENIZERS_PARALLELISM": "false",
    "DAGSTER_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    # Stage progress is shown by the pipeline's own display and recorded as metadata; library progress bars and
    # notices would interleave with it.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TQDM_DISABLE": "1",
}
for _key, _value in _OFFLINE_DEFAULTS.items():
    os.environ.setdefault(_key, _value)

# Notices that libraries address to developers (FutureWarning/DeprecationWarning raised from library code or from
# our calls into it) would interleave with the run's own progress lines, which the people running it read. They
# still show under pytest (it re-enables DeprecationWarning) and with `python -W default`.
import logging as _logging  # noqa: E402
import warnings as _warnings  # noqa: E402

_LIBRARIES = (r"(transformers|trl|peft|accelerate|torch|datasets|deepspeed|huggingface_hub|tokenizers|safetensors"
              r"|great_expectations|dagster|wandb|presidio_analyzer|spacy|llm_pipeline)(\.|$)")
for _category in (FutureWarning, DeprecationWarning):
    _warnings.filterwarnings("ignore", category=_category, module=_LIBRARIES)


class _DropNotices(_logging.Filter):
    """DeepSpeed logs "Setting accelerator to CPU ..." at WARNING on import, on every machine without a GPU: a fact
    about the machine that the run's device plan already reports, not a problem."""

    NOTICES = ("Setting accelerator to",)

    def filter(self, record: _logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOTICES)


# A filter on the logger object outlives DeepSpeed's own setup of it (setLevel, handlers) when it is imported later.
_logging.getLogger("DeepSpeed").addFilter(_DropNotices())
