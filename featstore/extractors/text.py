"""``bert`` and ``distilbert``: token features of a Hugging Face encoder (AutoTokenizer + AutoModel).

Tokenisation: the folder's own tokenizer, special tokens added, truncated to ``max_length`` (128) tokens;
any ``str`` works (empty -> just [CLS] [SEP]; non-Latin scripts and emoji map to word pieces or [UNK]).
The model runs with ``output_hidden_states=True``; ``hidden_states[0]`` is the embedding output and
``hidden_states[k]`` the output of layer k (for BERT-base, layer 6 is where ViLBERT's co-attention starts).

Output (T = max_length, D = hidden size): ``tokens [N, T, D]`` (last layer) and ``layer_<k> [N, T, D]`` for
each k in ``layers`` (per item, zero-padded past ``count``), ``count`` int32 [N] (true token count incl.
special tokens), ``input_ids`` int32 [N, T] (per item, padded with 0), ``cls [N, D]`` (first token of the
last layer), ``mean [N, D]`` (mean of the last layer over the real tokens, the attention mask).

weights: a model folder, a model id in the local Hugging Face cache, or ``"demo"`` (bert only: the
packaged all-MiniLM-L6-v2, a 6-layer 384-d BertModel).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import FeatstoreError
from ..store.spec import ArraySpec
from .base import BaseConfig, Extractor, pad_items, register_extractor
from .hf import load_model, load_pretrained
from .weights import DEMO, demo_text_dir, resolve_weights


@dataclass
class BertConfig(BaseConfig):
    """layers: extra hidden_states to store as ``layer_<k>`` (e.g. (6,) for ViLBERT-style co-attention input)."""

    weights: Optional[str] = "bert-base-uncased"
    max_length: int = 128
    layers: Tuple[int, ...] = ()

    def __post_init__(self):
        super().__post_init__()
        self.layers = tuple(int(k) for k in self.layers)
        if self.max_length < 2:
            raise FeatstoreError(f"max_length={self.max_length} is too small; use at least 2 (for [CLS] [SEP])")


@dataclass
class DistilBertConfig(BertConfig):
    weights: Optional[str] = "distilbert-base-uncased"


def text_input(item: Any) -> str:
    if not isinstance(item, str):
        raise FeatstoreError(f"text extractors take a str, got {type(item).__name__} ({item!r:.40}); "
                             "fill missing texts with '' in the manifest")
    return item


def truncation_note(tokenizer, texts: Sequence[str], max_length: int, positions: Optional[int] = None,
                    block: int = 1024) -> Optional[str]:
    """How many ``texts`` the tokenizer makes (special tokens added) longer than ``max_length``, i.e. the ones
    ``preprocess`` cut, and the longest: a line for the extraction summary; None when none was cut (MM-IMDB's
    plots often are at 128 tokens, Hateful Memes' captions hardly ever)."""
    lengths: List[int] = []
    for start in range(0, len(texts), block):
        batch = [text_input(t) for t in texts[start:start + block]]
        lengths += [len(ids) for ids in tokenizer(batch, truncation=False, verbose=False)["input_ids"]]
    cut = [n for n in lengths if n > max_length]
    if not cut:
        return None
    if positions and max_length >= positions:
        more = f"the model's {positions} positions hold no more"
    else:
        most = f" (at most the model's {positions})" if positions else ""
        more = f"pass --set max_length=N{most} to keep more of them"
    return (f"{len(cut)} of {len(lengths)} texts are longer than max_length={max_length} tokens and were cut to it "
            f"(the longest has {max(cut)}); {more}")


def pad_ids(items: List[Dict[str, torch.Tensor]], pad_id: int) -> Dict[str, torch.Tensor]:
    """Right-pad 1-D ``input_ids`` to the batch maximum: ``input_ids``/``attention_mask`` int64 [N, L]."""
    if not items:
        raise FeatstoreError("collate got an empty batch; the DataLoader must yield at least one item")
    n, L = len(items), max(len(it["input_ids"]) for it in items)
    ids = torch.full((n, L), int(pad_id), dtype=torch.int64)
    mask = torch.zeros((n, L), dtype=torch.int64)
    for i, it in enumerate(items):
        ids[i, : len(it["input_ids"])] = it["input_ids"]
        mask[i, : len(it["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask}


@register_extractor("bert", BertConfig, help="BERT-style encoder tokens (last layer + chosen layers), CLS, masked mean")
class BertExtractor(Extractor):
    modality = "text"
    key_kind = "sample_id"
    _compile_targets = ("model",)
    model_types: Tuple[str, ...] = ()  # empty: any AutoModel encoder

    def __init__(self, config: BertConfig, name: str):
        super().__init__(config, name)
        from transformers import AutoModel, AutoTokenizer

        if config.weights is None:
            raise FeatstoreError(f"{name} needs weights with a tokenizer; pass --weights DIR, a cached model id"
                                 f"{' or demo' if name == 'bert' else ''}")
        if config.weights == DEMO:
            if name != "bert":
                raise FeatstoreError(f"weights='demo' exists only for the bert extractor (MiniLM-L6), not {name!r}; "
                                     "pass --weights DIR")
            self.weights_path = demo_text_dir()
        else:
            self.weights_path = resolve_weights(config.weights, "dir")
        self.tokenizer = load_pretrained(AutoTokenizer, self.weights_path, "tokenizer")
        # the pooler is never read (cls is the first token's last-layer state), so a file without one loads
        self.model, self.weights_load = load_model(AutoModel, self.weights_path, "transformers encoder model",
                                                   may_miss=("pooler.",))
        self.model.eval()
        hf = self.model.config
        if self.model_types and hf.model_type not in self.model_types:
            raise FeatstoreError(f"weights {str(self.weights_path)!r} hold a {hf.model_type!r} model, the {name} "
                                 f"extractor expects {'/'.join(self.model_types)}; use the matching extractor")
        n_layers = int(getattr(hf, "num_hidden_layers", getattr(hf, "n_layers", 0)))
        bad = [k for k in config.layers if not 0 <= k <= n_layers]
        if bad:
            raise FeatstoreError(f"layers={config.layers} are invalid for a {n_layers}-layer model; "
                                 f"choose layers in 0..{n_layers}")
        max_pos = getattr(hf, "max_position_embeddings", None)
        if max_pos is not None and config.max_length > max_pos:
            raise FeatstoreError(f"max_length={config.max_length} exceeds the model's {max_pos} positions; "
                                 f"use max_length <= {max_pos}")
        self.dim = int(getattr(hf, "hidden_size", getattr(hf, "dim", 0)))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.positions = max_pos

    def truncation_note(self, texts: Sequence[str]) -> Optional[str]:
        """The summary's line on texts cut to ``max_length`` (``truncation_note``)."""
        return truncation_note(self.tokenizer, texts, self.config.max_length, self.positions)

    def schema(self):
        t, d = self.config.max_length, self.dim
        s = {"tokens": self.fspec(t, d, per_item=True)}
        for k in self.config.layers:
            s[f"layer_{k}"] = self.fspec(t, d, per_item=True)
        s.update({"count": ArraySpec((), "int32"), "input_ids": ArraySpec((t,), "int32", True),
                  "cls": self.fspec(d), "mean": self.fspec(d)})
        return s

    def preprocessing(self) -> Dict[str, Any]:
        tok = self.tokenizer
        return {"tokenizer": type(tok).__name__, "max_length": self.config.max_length, "truncation": True,
                "special_tokens": True, "lowercase": bool(getattr(tok, "do_lower_case", False)),
                "vocab_size": int(tok.vocab_size)}

    def preprocess(self, item: str) -> Dict[str, torch.Tensor]:
        ids = self.tokenizer(text_input(item), truncation=True, max_length=self.config.max_length,
                             add_special_tokens=True)["input_ids"]
        return {"input_ids": torch.tensor(ids, dtype=torch.int64)}

    def collate(self, items):
        return pad_ids(items, self.pad_id)

    @torch.inference_mode()
    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
        t = self.config.max_length
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        with self.autocast():
            out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        m = mask.unsqueeze(-1).float()
        last = out.last_hidden_state.float() * m  # zero the padding positions
        count = mask.sum(1)
        res = {"tokens": self.out(pad_items(last, t))}
        for k in self.config.layers:
            res[f"layer_{k}"] = self.out(pad_items(out.hidden_states[k].float() * m, t))
        res.update({"count": self.out_int(count), "input_ids": self.out_int(pad_items(ids * mask, t)),
                    "cls": self.out(last[:, 0]), "mean": self.out(last.sum(1) / count.clamp(min=1)[:, None])})
        return res


@register_extractor("distilbert", DistilBertConfig, help="DistilBERT tokens (last layer + chosen layers), CLS, masked mean")
class DistilBertExtractor(BertExtractor):
    model_types = ("distilbert",)
