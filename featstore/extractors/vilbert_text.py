"""``vilbert-text``: token states from a ViLBERT checkpoint's own text embeddings and lower text layers.

MMF's ViLBERT (``mmf/models/vilbert.py``, ``ViLBERTBase``) embeds the tokens with a BERT embedding layer and
runs text layers ``0 .. t_biattention_id[0]-1`` (0..5 in the released models) as plain BERT layers before
its first co-attention block; pretraining trained those layers, so they differ from ``bert-base-uncased``.
This extractor loads the checkpoint's ``embeddings.*`` and ``encoder.layer.{0..K-1}.*`` (K = max of
``layers``) into a transformers ``BertModel`` (every tensor of the model comes from the file: no missing
or unexpected keys), tokenises as MMF's ``bert_tokenizer`` processor does (a bert-base-uncased vocabulary,
lowercase, [CLS] ... [SEP], ``max_length`` 128) and stores what the ``bert`` extractor stores:
``layer_<k>`` for each k in ``layers`` (``hidden_states[k]``; 0 is the embedding output), ``tokens``
(layer K), ``count``, ``input_ids``, ``cls`` and ``mean`` (of layer K).

Use ``layers='[6]'`` for the ``vilbert`` head's default ``text_start_layer=6`` (the head then runs the
checkpoint's text layers 6..11 with the co-attention), or ``layers='[0]'`` with ``text_start_layer=0`` to
fine-tune every text layer. Only k <= the first co-attention layer is what ViLBERT itself computes.

Options: ``weights`` (the checkpoint file: MMF ``model.bert.*``, vilbert-multi-task ``bert.*`` /
``bert.bert.*`` keys, bare or under ``"model"``/``"state_dict"``), ``vocab`` (a tokenizer folder, a
``vocab.txt`` file or a model id in the local Hugging Face cache), ``num_attention_heads`` (not readable
from tensor shapes; 12 for BERT-base), ``trust_checkpoint`` (allow full unpickling of a file you trust),
``dtype`` (storage, float16 as every extractor; ``float32`` keeps MMF's float32 states exactly).

Checkpoint reading (``read_checkpoint``, ``base_key``) is shared with ``heads.vilbert_checkpoint``.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ..errors import FeatstoreError
from .base import BaseConfig, Extractor, register_extractor
from .hf import load_pretrained
from .text import BertExtractor
from .weights import resolve_weights

PREFIXES = ("model.bert.", "bert.bert.", "module.bert.", "bert.")
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")


def base_key(key: str) -> Optional[str]:
    """The key after its ViLBERT base-model prefix (``model.bert.``, ``bert.bert.``, ...), or None."""
    for p in PREFIXES:
        if key.startswith(p):
            return key[len(p):]
    return None


def _load(path: str, trust_pickle: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if trust_pickle:
            raise FeatstoreError(f"checkpoint {path!r} cannot be unpickled ({str(e).splitlines()[0]}); "
                                 "check the file is a torch checkpoint") from None
        raise FeatstoreError(
            f"checkpoint {path!r} holds objects other than tensors, which safe loading refuses; pass "
            "--trust-checkpoint (trust_pickle=True) only if you trust the file, since unpickling can run code"
        ) from None
    except Exception as e:  # corrupt archive, truncated file, not a torch file
        raise FeatstoreError(f"checkpoint {path!r} cannot be read ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); check it is a torch checkpoint") from None


def read_checkpoint(path: str, trust_pickle: bool = False) -> Dict[str, Tensor]:
    """The tensors of a ViLBERT checkpoint file by name (bare, or under ``"model"`` / ``"state_dict"``).

    Read with ``torch.load(weights_only=True)``; a file that needs arbitrary unpickling is refused unless
    ``trust_pickle``. One-line ``FeatstoreError`` for a missing, unreadable or tensor-less file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise FeatstoreError(f"checkpoint {path!r} is a folder; pass the ViLBERT .pt/.bin/.pth file itself (a "
                             "plain BERT folder's states come from --extractor bert)")
    if not os.path.isfile(path):
        raise FeatstoreError(f"checkpoint {path!r} does not exist; pass the path of a ViLBERT .pt/.bin file")
    obj = _load(path, trust_pickle)
    if isinstance(obj, dict):
        for k in ("model", "state_dict"):
            if k in obj and isinstance(obj[k], dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise FeatstoreError(f"checkpoint {path!r} holds no state dict (tensors by name, bare or under 'model'); "
                             "pass a ViLBERT model checkpoint")
    from .mmf_resnet import strip_data_parallel  # a model saved inside DataParallel: every key under module.

    return strip_data_parallel({k: v for k, v in obj.items() if isinstance(v, Tensor)})


def text_state(sd: Dict[str, Tensor], num_layers: int, path: str) -> Dict[str, Tensor]:
    """``embeddings.*`` and ``encoder.layer.{0..num_layers-1}.*`` of a ViLBERT checkpoint, named as in a
    transformers ``BertModel`` (buffers such as ``position_ids`` left out)."""
    out: Dict[str, Tensor] = {}
    for key, v in sd.items():
        rest = base_key(key)
        if rest is None or rest.endswith(("position_ids", "token_type_ids")):
            continue
        m = _LAYER.match(rest)
        if rest.startswith("embeddings.") or (m and int(m.group(1)) < num_layers):
            out[rest] = v
    if "embeddings.word_embeddings.weight" not in out:
        raise FeatstoreError(f"checkpoint {path!r} has no text embeddings (model.bert.embeddings.word_embeddings."
                             "weight); pass a ViLBERT checkpoint that includes its BERT embeddings")
    return out


def bert_config(state: Dict[str, Tensor], num_layers: int, heads: int, path: str):
    """A transformers ``BertConfig`` with the sizes read from the tensors' shapes."""
    from transformers import BertConfig

    have = sorted({int(m.group(1)) for k in state for m in [_LAYER.match(k)] if m})
    if num_layers > len(have):
        raise FeatstoreError(f"checkpoint {path!r} has {len(have)} text layers, too few for layer {num_layers}; "
                             f"choose layers within 0..{len(have)}")
    vocab, hidden = state["embeddings.word_embeddings.weight"].shape
    if heads <= 0 or hidden % heads:
        raise FeatstoreError(f"num_attention_heads={heads} does not divide the checkpoint's text width {hidden}; "
                             "pass the checkpoint's head count (12 for BERT-base)")
    inter = state["encoder.layer.0.intermediate.dense.weight"].shape[0] if num_layers else 4 * hidden
    return BertConfig(vocab_size=int(vocab), hidden_size=int(hidden), num_hidden_layers=int(num_layers),
                      num_attention_heads=int(heads), intermediate_size=int(inter), hidden_act="gelu",
                      max_position_embeddings=int(state["embeddings.position_embeddings.weight"].shape[0]),
                      type_vocab_size=int(state["embeddings.token_type_embeddings.weight"].shape[0]),
                      layer_norm_eps=1e-12, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def load_text_model(path: str, num_layers: int, heads: int = 12, trust_pickle: bool = False):
    """A transformers ``BertModel`` (eval mode) holding the checkpoint's embeddings and text layers
    ``0..num_layers-1``; every tensor of the model must come from the file."""
    from transformers import BertModel

    state = text_state(read_checkpoint(path, trust_pickle), num_layers, path)
    cfg = bert_config(state, num_layers, heads, path)
    cfg._attn_implementation = "eager"  # plain softmax attention, as MMF's BertSelfAttention
    model = BertModel(cfg, add_pooling_layer=False)
    own = model.state_dict()
    bad = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise FeatstoreError(f"checkpoint {path!r} key {bad[0]!r} has shape {tuple(state[bad[0]].shape)}, a BERT "
                             f"layer of these sizes needs {tuple(own[bad[0]].shape)}; pass a ViLBERT checkpoint")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FeatstoreError(f"checkpoint {path!r} does not map onto a BertModel: missing {missing[:2]}, unexpected "
                             f"{unexpected[:2]}; pass a ViLBERT checkpoint with its text embeddings and layers")
    return model.eval()


def load_vocab(spec: str):
    """A BERT tokenizer from a folder, a ``vocab.txt`` file or a model id in the local Hugging Face cache."""
    from transformers import AutoTokenizer, BertTokenizer

    path = Path(os.path.expanduser(spec))
    if path.is_file():  # a vocab.txt (first positional argument: vocab_file / vocab, by transformers version)
        return BertTokenizer(str(path), do_lower_case=True)
    if not path.is_dir():
        try:
            path = resolve_weights(spec, "dir")
        except FeatstoreError as e:
            raise FeatstoreError(f"vilbert-text tokenises with bert-base-uncased's vocabulary (vocab={spec!r}), "
                                 f"which is not here: {str(e).replace('--weights DIR', '--set vocab=DIR')}") from None
    return load_pretrained(AutoTokenizer, path, "tokenizer")


@dataclass
class VilbertTextConfig(BaseConfig):
    """weights: the ViLBERT checkpoint file; layers: the ``hidden_states`` to store as ``layer_<k>``."""

    vocab: str = "bert-base-uncased"
    layers: Tuple[int, ...] = (6,)
    max_length: int = 128
    num_attention_heads: int = 12
    trust_checkpoint: bool = False

    def __post_init__(self):
        super().__post_init__()
        self.layers = tuple(int(k) for k in self.layers)
        if not self.layers or min(self.layers) < 0:
            raise FeatstoreError(f"layers={self.layers} must be one or more layers >= 0, e.g. layers='[6]'")
        if self.max_length < 2:
            raise FeatstoreError(f"max_length={self.max_length} is too small; use at least 2 (for [CLS] [SEP])")


@register_extractor("vilbert-text", VilbertTextConfig,
                    help="a ViLBERT checkpoint's own text embeddings + lower text layers (layer_<k> states)")
class VilbertTextExtractor(BertExtractor):
    """Schema, tokenisation and forward of ``bert``; the model is the checkpoint's lower text stream."""

    def __init__(self, config: VilbertTextConfig, name: str):
        Extractor.__init__(self, config, name)
        if config.weights is None:
            raise FeatstoreError("vilbert-text needs the ViLBERT checkpoint; pass --weights vilbert_pretrained_cc.bin")
        self.weights_path = Path(os.path.expanduser(config.weights))
        self.model = load_text_model(str(self.weights_path), max(config.layers), config.num_attention_heads,
                                     config.trust_checkpoint)
        self.tokenizer = load_vocab(config.vocab)
        hf = self.model.config
        if self.tokenizer.vocab_size > hf.vocab_size:
            raise FeatstoreError(f"vocab {config.vocab!r} has {self.tokenizer.vocab_size} tokens, the checkpoint's "
                                 f"embedding {hf.vocab_size}; pass bert-base-uncased's vocabulary")
        if config.max_length > hf.max_position_embeddings:
            raise FeatstoreError(f"max_length={config.max_length} exceeds the checkpoint's "
                                 f"{hf.max_position_embeddings} positions; use max_length <= {hf.max_position_embeddings}")
        self.dim = int(hf.hidden_size)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.positions = int(hf.max_position_embeddings)
