"""Instruction tokenizers: ByteTokenizer (tiny preset) and a local pretrained one (n1-2b).

ByteTokenizer is deterministic and vocabulary-free: text is UTF-8 encoded; byte b becomes
id b + 3, and ids 0, 1, 2 are pad, bos and eos. Every encoded instruction is
`[bos, bytes..., eos]`, cut to `max_length` (keeping eos).

PretrainedTokenizer wraps a transformers tokenizer read from a local directory only
(`local_files_only=True`): nothing is ever downloaded. Both return the same batch tensors.
"""

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoTokenizer

if TYPE_CHECKING:
    from fleetloop.system.backbone import LanguageConfig


class ByteTokenizer:
    """UTF-8 bytes -> ids with pad/bos/eos, padded on the right to a fixed length."""

    pad_id = 0
    bos_id = 1
    eos_id = 2
    byte_offset = 3
    vocab_size = 256 + byte_offset

    def __init__(self, max_length: int):
        """Args:
        max_length: length of every encoded sequence, bos and eos included (>= 2).
        """
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for bos and eos), got {max_length}")
        self.max_length = max_length

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, `[bos, bytes..., eos]`, with the bytes truncated to fit max_length."""
        body = [b + self.byte_offset for b in text.encode("utf-8")][: self.max_length - 2]
        return [self.bos_id, *body, self.eos_id]

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`, skipping special ids; invalid UTF-8 (from truncation) is replaced."""
        data = bytes(i - self.byte_offset for i in ids if i >= self.byte_offset)
        return data.decode("utf-8", errors="replace")

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch.

        Returns:
            input_ids (B, max_length) long, right-padded with pad_id, and
            attention_mask (B, max_length) bool, True on real tokens.
        """
        input_ids = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(texts), self.max_length), dtype=torch.bool)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = True
        return input_ids, attention_mask


class PretrainedTokenizer:
    """A transformers tokenizer from a local directory, right-padded to a fixed length."""

    def __init__(self, path: str | os.PathLike, max_length: int):
        """Args:
        path: directory with the tokenizer files (tokenizer.json / tokenizer_config.json ...).
        max_length: length of every encoded sequence.

        Raises:
            ValueError: if `path` is not a directory or holds no loadable tokenizer.
        """
        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"tokenizer_dir: {path} is not a directory")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as error:
            raise ValueError(f"tokenizer_dir: no tokenizer could be loaded from {path}: {error}") from error
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_length = max_length
        self.vocab_size = len(self.tokenizer)

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch: input_ids (B, max_length) long and attention_mask (B, max_length) bool."""
        encoded = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return encoded["input_ids"].long(), encoded["attention_mask"].bool()


def load_tokenizer(
    config: "LanguageConfig", tokenizer_dir: str | os.PathLike | None = None
) -> ByteTokenizer | PretrainedTokenizer:
    """The tokenizer `config.tokenizer` names; a pretrained one is read from `tokenizer_dir`.

    Raises:
        ValueError: if a pretrained tokenizer has no directory or does not fit llm.vocab_size.
    """
    if config.tokenizer == "byte":
        tokenizer = ByteTokenizer(config.max_text_tokens)
    elif tokenizer_dir is None:
        raise ValueError("tokenizer_dir: llm.tokenizer='pretrained' needs a local tokenizer directory, got None")
    else:
        tokenizer = PretrainedTokenizer(tokenizer_dir, config.max_text_tokens)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"llm.vocab_size={config.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size} ids"
        )
    return tokenizer
