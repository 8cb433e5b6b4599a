"""The extraction summary counts the texts a text extractor cut to max_length (MM-IMDB's plots are often longer
than 128 tokens; a cut plot is silently a different input otherwise). The reference lengths come from the
MiniLM folder's tokenizer called here directly, with special tokens and no truncation."""
from __future__ import annotations

import json

from transformers import AutoTokenizer

from cli.featstore_cli import main as featstore
from cli_helpers import extract_args, invoke, make_hm_folder
from featstore.extractors.weights import demo_text_dir


def test_the_summary_counts_the_texts_cut_to_max_length(tmp_path):
    data = make_hm_folder(tmp_path / "data")
    rows = [json.loads(line) for split in ("train", "dev_seen", "test_seen")
            for line in (data / f"{split}.jsonl").read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(demo_text_dir())
    lengths = [len(tok(r["text"])["input_ids"]) for r in rows]
    limit = sorted(lengths)[len(lengths) // 2]  # about half the captions are longer
    cut = [n for n in lengths if n > limit]
    assert cut and len({r['id'] for r in rows}) == len(rows)  # one text row per sample
    out = invoke(featstore, extract_args(data, tmp_path / "st", "bert", "--set", f"max_length={limit}"))
    assert (f"  note: {len(cut)} of {len(rows)} texts are longer than max_length={limit} tokens and were cut to it "
            f"(the longest has {max(cut)}); pass --set max_length=N (at most the model's 512) to keep more of them"
            in out.splitlines())
    again = invoke(featstore, extract_args(data, tmp_path / "st", "bert", "--set", f"max_length={limit}"))
    assert "note:" not in again  # already complete: nothing extracted, nothing counted
    whole = invoke(featstore, extract_args(data, tmp_path / "st", "bert", "--set", f"max_length={max(lengths)}"))
    assert "longer than max_length" not in whole


def test_a_count_that_fails_is_said_and_the_version_stays_complete(tmp_path, monkeypatch):
    from featstore.extractors.text import BertExtractor
    from featstore.store import open_store

    def broken(self, texts):
        raise ValueError("tokenizer state lost")

    monkeypatch.setattr(BertExtractor, "truncation_note", broken)  # damage injected in the counting pass only
    data = make_hm_folder(tmp_path / "data")
    out = invoke(featstore, extract_args(data, tmp_path / "st", "bert"))
    assert ("  note: the texts cut to max_length were not counted (ValueError: tokenizer state lost); the version "
            "is complete") in out.splitlines()
    fsv = open_store(tmp_path / "st").open("bert")
    assert len(fsv) == 48 and not fsv.failures
