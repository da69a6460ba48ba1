"""ByteTokenizer: a deterministic, vocabulary-free tokenizer for the tiny preset.

Text is UTF-8 encoded; byte b becomes id b + 3, and ids 0, 1, 2 are pad, bos and eos.
Every encoded instruction is `[bos, bytes..., eos]`, cut to `max_length` (keeping eos).
"""

import torch


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
