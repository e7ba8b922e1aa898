"""A word-level tokenizer for the toy world, built in code (no hub files).

It is a ``transformers.PreTrainedTokenizerFast`` so that diffusers pipelines use
it exactly as they use CLIP's tokenizer (padding to ``model_max_length``,
``tokenize`` for textual-inversion checks, ``batch_decode``).
"""

from __future__ import annotations

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from .world import VOCABULARY

MAX_LENGTH = 16
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


def build_tokenizer(words: tuple[str, ...] = VOCABULARY) -> PreTrainedTokenizerFast:
    """Tokenizer whose ids are: the four special tokens, then ``words`` in order."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + tuple(words))}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>",
        special_tokens=[("<bos>", BOS_ID), ("<eos>", EOS_ID)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=MAX_LENGTH,
    )
