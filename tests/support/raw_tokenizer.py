"""The tiny model's tokenizer for the scripts' tests, without transformers."""

from __future__ import annotations

from pathlib import Path


class RawTokenizer:
    """The byte-level BPE of the tiny model through `tokenizers` alone: the calls
    random_prompts makes, without the seconds that importing transformers costs."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))
        self.all_special_ids = [i for i, t in self.tok.get_added_tokens_decoder().items()
                                if t.special]

    def __len__(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids
