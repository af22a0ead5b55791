"""Find a model (and its tokenizer) before anything starts: a local folder, the Hugging Face cache, or the Hub.

``resolve_model("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "model.path")`` returns where the model will be
loaded from, or raises ``ModelNotFoundError`` with one message: the field, what was tried (local folder, Hub
cache, Hub) and the ways to fix it. Without this check, a machine that cannot reach the Hub meets three chained
tracebacks from transformers and huggingface_hub after the run has already started; the original error goes to
the log file instead (logger ``deepscaler.models.resolve``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from deepscaler.console import say
from deepscaler.data.sources import hub_offline  # the same offline flags decide for data and models

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# What a check downloads from the Hub: nothing but the small files that say the repository is a usable model.
PROBE_PATTERNS = [CONFIG_FILE, *TOKENIZER_FILES]


class ModelNotFoundError(RuntimeError):
    """A model or tokenizer that cannot be found or fetched; the message says what was tried and how to fix it."""


@dataclass(frozen=True)
class ModelLocation:
    """Where a model will be loaded from."""

    spec: str
    """What the user gave (a folder or a Hub id); pass it on to transformers/vLLM unchanged."""
    kind: str
    """"local folder", "Hub cache" or "Hub"."""
    reason: str


def _missing_parts(folder: Path, weights: bool, tokenizer: bool) -> list[str]:
    names = {p.name for p in folder.iterdir() if p.is_file()}
    missing = []
    if weights and CONFIG_FILE not in names:
        missing.append("config.json")
    if weights and not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        missing.append("weights (*.safetensors or pytorch_model*.bin)")
    if tokenizer and not any(name in names for name in TOKENIZER_FILES):
        missing.append("a tokenizer (tokenizer.json / tokenizer_config.json)")
    return missing


def _looks_like_hub_id(spec: str) -> bool:
    """``owner/name`` (or a bare ``name``) that is not written as a path."""
    return not spec.startswith((".", "/", "~")) and spec.count("/") <= 1 and "\\" not in spec and bool(spec.strip())


def resolve_model(spec: str, field: str, *, weights: bool = True, tokenizer: bool = True) -> ModelLocation:
    """Check that ``spec`` (the value of ``field``, e.g. ``model.path`` or ``--model``) can be loaded.

    Order: an existing local folder (must hold config.json and the weights when ``weights``, a tokenizer when
    ``tokenizer``; ``weights=False`` checks a tokenizer alone); the Hugging Face cache (a snapshot with config.json); the Hub (the repository exists and
    lists weights). Raises ``ModelNotFoundError`` naming the field, every place tried and the fixes."""
    path = Path(spec).expanduser()
    tried: list[str] = []
    if path.is_dir():
        missing = _missing_parts(path, weights, tokenizer)
        if not missing:
            return ModelLocation(spec, "local folder", f"{path} holds config.json, weights and a tokenizer")
        raise ModelNotFoundError(_message(field, spec, [f"local folder {path}: exists but has no "
                                                        + ", no ".join(missing)], is_folder=True))
    tried.append(f"local folder: no folder {path}")
    if not _looks_like_hub_id(spec):
        raise ModelNotFoundError(_message(field, spec, tried, is_folder=True))

    # imported only when a Hub id must be checked: `deepscaler --help` imports this module through the CLI
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(huggingface_hub.snapshot_download(spec, allow_patterns=PROBE_PATTERNS, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError) as error:
        logger.debug("Hub cache lookup of %s failed", spec, exc_info=True)
        tried.append(f"Hub cache {huggingface_hub.constants.HF_HUB_CACHE}: not downloaded ({type(error).__name__})")
    else:
        if (snapshot / CONFIG_FILE).is_file():
            return ModelLocation(spec, "Hub cache", f"snapshot {snapshot}")
        tried.append(f"Hub cache: snapshot {snapshot} has no config.json")
    if hub_offline():
        tried.append("Hub: not contacted (HF_HUB_OFFLINE=1)")
        raise ModelNotFoundError(_message(field, spec, tried))
    try:
        info = huggingface_hub.HfApi().model_info(spec)
    except Exception as error:  # noqa: BLE001 - network down, unknown id, gated repo: all reported the same way
        logger.debug("Hub lookup of %s failed", spec, exc_info=True)  # the log file only
        tried.append(f"Hub: {type(error).__name__}: {_first_line(error)}")
        raise ModelNotFoundError(_message(field, spec, tried)) from None
    files = [s.rfilename for s in (info.siblings or [])]
    if CONFIG_FILE not in files or not any(Path(f).match(p) for f in files for p in WEIGHT_PATTERNS):
        tried.append(f"Hub: repository {spec} exists but has no config.json and weights")
        raise ModelNotFoundError(_message(field, spec, tried))
    return ModelLocation(spec, "Hub", "the Hub repository lists config.json and weights (downloaded on first load)")


def _message(field: str, spec: str, tried: list[str], is_folder: bool = False) -> str:
    fixes = ("give a folder written by save_pretrained (config.json, *.safetensors, tokenizer files), or a Hub "
             "model id such as deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    if not is_folder:
        fixes = ("check the id; allow network access once (HF_HUB_OFFLINE unset) so it is downloaded into the "
                 "Hugging Face cache; or download it on a connected machine (`hf download ID`) and copy the cache "
                 "(HF_HOME) or pass the local folder instead")
    return f"{field}={spec}: model not found. Tried: " + "; ".join(tried) + f". Fix: {fixes}."


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else "no details"


def check_run_models(model: str, field: str, tokenizer: str | None = None,
                     tokenizer_field: str = "model.tokenizer") -> list[ModelLocation]:
    """The check ``deepscaler train`` and ``deepscaler eval`` run before anything starts: the model (with its
    tokenizer unless a separate one is given), then the separate tokenizer. Each location is logged."""
    locations = [(field, resolve_model(model, field, tokenizer=tokenizer is None))]
    if tokenizer is not None:
        locations.append((tokenizer_field, resolve_model(tokenizer, tokenizer_field, weights=False)))
    for name, location in locations:
        say(f"{name}: {location.spec} from the {location.kind} ({location.reason})")
    return [location for _, location in locations]
