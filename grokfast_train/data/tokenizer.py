"""The BERT-style WordPiece tokenizer: trained on the training pool, or supplied as tokenizer.json.

The paper uses BERT's uncased WordPiece vocabulary (30522 entries). Without network access
to fetch it, the same kind of tokenizer is trained with ``tokenizers`` on the training pool
only (never the test set, which would leak test vocabulary into the model's inputs):
BERT normaliser (lowercase, accents stripped), BERT pre-tokeniser, WordPiece with the special
tokens ``[PAD]`` (id 0), ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``, and the post-processor
``[CLS] $A [SEP]`` so that the classifier reads position 0. Sequences are truncated and
padded to ``max_len``.

Training is not bit-reproducible: ``tokenizers`` breaks ties between equally frequent merges
in hash-map order, so two trainings on the same pool can differ in their rarest entries. The
trained tokenizer is therefore cached and shared by every run with the same data settings,
and the cached file (its path is in ``TaskData.source``) can be passed as ``--tokenizer`` to
reproduce a run elsewhere.

``--tokenizer path/to/tokenizer.json`` (e.g. bert-base-uncased's) replaces the trained one;
it must know ``[PAD]`` and ``[CLS]`` and put ``[CLS]`` first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from ..errors import RunError

_CHUNK = 20_000  # texts per encode_batch call
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] gets id 0


def train_wordpiece(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """A BERT-style uncased WordPiece tokenizer trained on ``texts``.

    On a small corpus the vocabulary may come out smaller than ``vocab_size``.
    """
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                        show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer.json written by ``tokenizers`` (``Tokenizer.save``), checked for BERT-style use."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RunError(f"tokenizer file {path} does not exist; pass --tokenizer with a tokenizer.json "
                       f"written by the tokenizers library, or leave it out to train one")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RunError(f"cannot read tokenizer {path} ({first}); --tokenizer needs a tokenizer.json "
                       f"written by the tokenizers library") from None
    missing = [t for t in ("[PAD]", "[CLS]") if tok.token_to_id(t) is None]
    if missing:
        raise RunError(f"tokenizer {path} has no {' and no '.join(missing)} token; the classifier needs "
                       f"[PAD] for padding and [CLS] at position 0 (a BERT-style tokenizer)")
    first_id = tok.encode("probe").ids[:1]
    if first_id != [tok.token_to_id("[CLS]")]:
        raise RunError(f"tokenizer {path} does not put [CLS] first; its post_processor must be "
                       f"BERT-style ('[CLS] $A [SEP]')")
    return tok


def encode(tok: Tokenizer, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``(n, max_len)`` (int16 when the vocabulary fits, else int32) and lengths ``(n,)``.

    Longer texts are truncated (keeping ``[CLS]`` and ``[SEP]``), shorter ones padded with
    ``[PAD]`` on the right; the length counts the real tokens, so ``mask = arange < length``.
    """
    if max_len < 2:
        raise RunError(f"--max-len {max_len} leaves no room for [CLS] and [SEP]; use at least 2")
    pad = tok.token_to_id("[PAD]")
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(pad_id=pad, pad_token="[PAD]", length=max_len)
    dtype = np.int16 if tok.get_vocab_size() <= np.iinfo(np.int16).max else np.int32
    ids = np.full((len(texts), max_len), pad, dtype=dtype)
    lengths = np.zeros(len(texts), dtype=np.int32)
    for start in range(0, len(texts), _CHUNK):  # chunks bound the memory held by Encoding objects
        batch = tok.encode_batch(list(texts[start:start + _CHUNK]))
        ids[start:start + len(batch)] = [e.ids for e in batch]
        lengths[start:start + len(batch)] = [sum(e.attention_mask) for e in batch]
    return torch.from_numpy(ids), torch.from_numpy(lengths)
