"""Data: text sources, token blocks, chat-format pairs, calibration sets and the embedded-corpus build.

``from helpers.data import load_blocks, chat_blocks, calibration_batches`` (``helpers.data.corpus`` builds the
corpus itself and is imported on its own: it loads the teacher).
"""

from .calibration import calibration_batches, calibration_settings
from .chat import (ChatPair, chat_blocks, chat_examples, chat_pairs, chat_prompt, pad_examples, prompt_ids,
                   training_blocks)
from .packing import load_blocks, pack, sample_batches, scored_tokens, token_blocks
from .sources import REAL_TEXT, SPLITS, corpus_path, data_dir, load_records, load_texts, read_jsonl

__all__ = ["SPLITS", "REAL_TEXT", "data_dir", "corpus_path", "read_jsonl", "load_records", "load_texts", "pack",
           "token_blocks", "load_blocks", "sample_batches", "scored_tokens", "ChatPair", "chat_prompt", "chat_pairs",
           "chat_examples", "chat_blocks", "training_blocks", "prompt_ids", "pad_examples", "calibration_settings",
           "calibration_batches"]
