"""A tiny word-level tokenizer and learned token embedding for short text prompts.

STARFlow-V (Apple 2025, "STARFlow-V: End-to-End Video Generative Modeling with Normalizing
Flows") conditions its deep autoregressive block on text through a causal prefix of text
tokens. Here the prefix comes from a small learned embedding of a fixed, closed vocabulary (no
downloads): enough for captions such as "a 3 and a 7 moving apart". STARFlow (Gu et al. 2025,
arXiv:2506.06276) describes the same deep-block-only conditioning for images.

Example:
    >>> tok = TextTokenizer(max_tokens=8)
    >>> ids = tok.encode("a 3 and a 7 moving apart")
    >>> tok.decode(ids)
    'a 3 and a 7 moving apart'
"""

from __future__ import annotations

import re

import torch
from torch import nn

__all__ = ["DEFAULT_VOCABULARY", "PAD", "TextEmbedding", "TextTokenizer"]

PAD = "<pad>"

DEFAULT_VOCABULARY: tuple[str, ...] = (
    PAD,
    *[str(d) for d in range(10)],
    *"zero one two three four five six seven eight nine".split(),
    *"a an and the with of".split(),
    *"moving apart together bouncing left right up down still fast slow".split(),
    *"digit digits circle square triangle shape shapes ball".split(),
    *"red green blue yellow white cyan magenta orange".split(),
    *"video clip frame person face".split(),
)


class TextTokenizer:
    """Map short prompts to fixed-length id tensors over a closed word vocabulary.

    Arguments:
        max_tokens: prompt length in tokens; shorter prompts are padded with ``<pad>`` (id 0).
        vocabulary: the words, ``<pad>`` first.
    """

    def __init__(self, max_tokens: int = 8, vocabulary: tuple[str, ...] = DEFAULT_VOCABULARY):
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if vocabulary[0] != PAD:
            raise ValueError(f"the vocabulary must start with {PAD!r}, got {vocabulary[0]!r}")
        self.max_tokens = max_tokens
        self.vocabulary = vocabulary
        self._ids = {word: i for i, word in enumerate(vocabulary)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def words(self, prompt: str) -> list[str]:
        """Lower-cased words and digits of ``prompt`` (punctuation dropped)."""
        return re.findall(r"[a-z]+|\d", prompt.lower())

    def encode(self, prompt: str) -> torch.Tensor:
        """(max_tokens,) long ids; unknown words or too many words raise ValueError."""
        words = self.words(prompt)
        unknown = [w for w in words if w not in self._ids]
        if unknown:
            known = " ".join(self.vocabulary[1:])
            raise ValueError(
                f"prompt word {unknown[0]!r} is not in the model's vocabulary; known words: {known}"
            )
        if len(words) > self.max_tokens:
            raise ValueError(
                f"prompt {prompt!r} has {len(words)} words; this model allows at most "
                f"{self.max_tokens}"
            )
        ids = [self._ids[w] for w in words] + [0] * (self.max_tokens - len(words))
        return torch.tensor(ids, dtype=torch.long)

    def encode_batch(self, prompts: list[str]) -> torch.Tensor:
        """(len(prompts), max_tokens) long ids."""
        return torch.stack([self.encode(p) for p in prompts])

    def decode(self, ids: torch.Tensor) -> str:
        """The prompt words of one id row, padding dropped."""
        return " ".join(self.vocabulary[int(i)] for i in ids.tolist() if int(i) != 0)


class TextEmbedding(nn.Module):
    """Learned word embedding plus learned positions: ids (B, L) -> prefix tokens (B, L, width).

    ``forward`` checks the ids' shape and dtype only: reading their values would wait for the
    device on every training step and break torch.compile graphs. Their values are checked
    where ids enter: :meth:`TextTokenizer.encode` makes only ids of its vocabulary (the
    datasets and the prompts of sampling go through it), and :meth:`check_ids` refuses any
    other tensor (the video flow calls it before sampling, via ``check_condition``).
    """

    def __init__(self, vocab_size: int, max_tokens: int, width: int) -> None:
        super().__init__()
        self.max_tokens = max_tokens
        self.words = nn.Embedding(vocab_size, width)
        self.positions = nn.Parameter(torch.zeros(max_tokens, width))
        nn.init.normal_(self.words.weight, std=0.02)
        nn.init.normal_(self.positions, std=0.02)

    def check_ids(self, ids: torch.Tensor) -> None:
        """Raise ValueError unless ``ids`` is (batch, max_tokens) integers in [0, vocab size).

        Reads the values (a device sync): call it where ids come in, not per training step.
        """
        self._check_layout(ids)
        vocab = self.words.num_embeddings
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(
                f"text ids must lie in [0, {vocab}), got [{int(ids.min())}, {int(ids.max())}]"
            )

    def _check_layout(self, ids: torch.Tensor) -> None:
        if ids.ndim != 2 or ids.shape[1] != self.max_tokens:
            raise ValueError(
                f"text ids must have shape (batch, {self.max_tokens}), got {tuple(ids.shape)}"
            )
        if ids.dtype not in (torch.long, torch.int):
            raise ValueError(f"text ids must be integers (torch.long), got {ids.dtype}")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self._check_layout(ids)
        return self.words(ids) + self.positions
