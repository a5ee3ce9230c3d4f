"""Tokenizers: a Llama-style SentencePiece tokenizer trained locally, or a real checkpoint's, plus LLaVA-HF tokens.

The local one mirrors Llama/Vicuna: SentencePiece BPE with byte fallback, `<unk>`=0, `<s>`=1, `</s>`=2, a
dummy-prefix space, digits split, no normalisation. It is served through transformers' LlamaTokenizer, so
training and evaluation use the same class as a real Vicuna checkpoint.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm
from tokenizers import AddedToken
from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerBase

from components.models.remote import localize

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
SPM_FILE = "tokenizer.model"
_SPM_SEED = 1234  # fixed: the same corpus always gives the same tokenizer
_MAX_SENTENCES = 2_000_000  # SentencePiece samples (seeded) above this many lines


def _lines(texts: Iterable[str]) -> Iterator[str]:
    # SentencePiece trains on lines; a "\n" inside one would become a vocabulary piece, whereas Llama encodes
    # it through byte fallback (<0x0A>). Splitting keeps newlines out of the vocabulary.
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> PreTrainedTokenizerBase:
    """Train a Llama-style SentencePiece BPE tokenizer on `texts`, save it to `out_dir` and return it.

    `out_dir` then holds tokenizer.model (SentencePiece) and the transformers files, so
    `AutoTokenizer.from_pretrained(out_dir)` reloads it; the LLaVA tokens (`add_llava_tokens`) are included.
    """
    out = Path(out_dir)
    lines = list(_lines(texts))
    if not lines:
        raise ValueError("train_tokenizer: the corpus is empty (no non-blank lines of text)")
    buf = io.BytesIO()
    spm.set_random_generator_seed(_SPM_SEED)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=buf,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            character_coverage=1.0,  # rare characters still round-trip through byte fallback
            split_digits=True,
            allow_whitespace_only_pieces=True,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            add_dummy_prefix=True,
            max_sentencepiece_length=16,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,  # Llama has no pad piece; add_llava_tokens adds <pad>
            input_sentence_size=_MAX_SENTENCES,
            shuffle_input_sentence=True,
            num_threads=1,  # multi-threaded BPE training is not guaranteed to be reproducible
            minloglevel=2,
        )
    except RuntimeError as e:
        # e.g. "Vocabulary size is too high (5000). Please set it to a value <= 812."
        raise ValueError(f"model.tokenizer.vocab_size={vocab_size}: SentencePiece refused it: {e}") from None

    out.mkdir(parents=True, exist_ok=True)
    (out / SPM_FILE).write_bytes(buf.getvalue())
    # add_bos_token must be explicit: transformers 5 builds the BOS post-processor only when asked.
    tok = LlamaTokenizer.from_pretrained(str(out), add_bos_token=True, add_eos_token=False)
    tok = add_llava_tokens(tok)
    tok.save_pretrained(str(out))
    return tok


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """A checkpoint's tokenizer (HF name, local folder or s3:// folder) with the LLaVA tokens added."""
    local = localize(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(local)
    except (OSError, ValueError) as e:
        raise ValueError(f"model.tokenizer.name_or_path={name_or_path!r}: cannot load a tokenizer: {e}") from None
    return add_llava_tokens(tok)


def add_llava_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Apply the LLaVA-HF conventions in place and return the tokenizer.

    Adds `<image>` as a special token (its id is LlavaConfig.image_token_index) and a `<pad>` token when the
    tokenizer has no pad token; sets padding_side "right" for training (generation switches to left).
    """
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": AddedToken(PAD_TOKEN, special=True, normalized=False)})
    tokenizer.padding_side = "right"
    tokenizer.init_kwargs["padding_side"] = "right"  # save_pretrained writes init_kwargs, not the attribute
    return tokenizer


def image_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id of `<image>`; raises if `add_llava_tokens` was not applied."""
    token_id = tokenizer.get_vocab().get(IMAGE_TOKEN)
    if token_id is None:
        raise ValueError(f"tokenizer has no {IMAGE_TOKEN} token; call add_llava_tokens(tokenizer) first")
    return int(token_id)
