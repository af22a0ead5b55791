"""Problem sets and prompts: load DeepScaleR-format data into typed records, build and tokenise prompts."""

from deepscaler.data.export import to_verl_rows, write_verl_parquet
from deepscaler.data.loading import TEST_DATASETS, TRAIN_DATASETS, load_problems, read_rows
from deepscaler.data.problems import INSTRUCTION, Problem, RowError, last_boxed_content, normalize_answers
from deepscaler.data.prompts import (
    EncodedPrompts,
    build_prompt,
    chat_messages,
    detect_think_prefill,
    encode_prompts,
    render_prompt,
    resolve_think_prefill,
)
from deepscaler.data.sources import (
    CACHE_DIR_ENV,
    DATA_DIR_ENV,
    HUB_SOURCES,
    DataNotFoundError,
    cache_dir,
    resolve_data_dir,
)

__all__ = [
    "CACHE_DIR_ENV", "DATA_DIR_ENV", "HUB_SOURCES", "INSTRUCTION", "TEST_DATASETS", "TRAIN_DATASETS",
    "DataNotFoundError", "EncodedPrompts", "Problem", "RowError", "build_prompt", "cache_dir", "chat_messages", "detect_think_prefill", "encode_prompts", "last_boxed_content",
    "load_problems", "normalize_answers", "read_rows", "render_prompt", "resolve_data_dir",
    "resolve_think_prefill", "to_verl_rows", "write_verl_parquet",
]
