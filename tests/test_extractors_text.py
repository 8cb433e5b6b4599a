"""bert / distilbert / clip against the transformers models' own outputs (tiny random configs)."""
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (AutoModel, BertConfig, BertModel, BertTokenizerFast, CLIPConfig, CLIPImageProcessor,
                          CLIPModel, DistilBertConfig, DistilBertModel)

from featstore.errors import FeatstoreError
from featstore.extractors import create_extractor

WORDS = ["the", "cat", "sat", "on", "mat", "hello", "world", "a", "dog", "##s", "!", "funny", "meme"]
TEXTS = ["the cat sat on the mat", "", "hello world !", "dogs meme " * 40, "日本語のテキスト 😀🔥", "Ελληνικά κείμενο"]


def _vocab(d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    return BertTokenizerFast(vocab_file=str(d / "vocab.txt"), do_lower_case=True)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    d = tmp_path_factory.mktemp("bert")
    tok = _vocab(d)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_distilbert(tmp_path_factory):
    d = tmp_path_factory.mktemp("distilbert")
    tok = _vocab(d)
    torch.manual_seed(0)
    DistilBertModel(DistilBertConfig(vocab_size=tok.vocab_size, dim=16, n_layers=2, n_heads=2, hidden_dim=32,
                                     max_position_embeddings=64)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _check_against_model(ex, d, texts, max_length, layers):
    out = ex.forward(ex.collate([ex.preprocess(t) for t in texts]))
    tok = BertTokenizerFast.from_pretrained(str(d))
    enc = tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    m = AutoModel.from_pretrained(str(d)).eval()
    with torch.no_grad():
        o = m(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
    mask = enc["attention_mask"].numpy().astype(np.float64)
    last = o.last_hidden_state.double().numpy()
    L = mask.shape[1]
    for n in range(len(texts)):
        c = int(mask[n].sum())
        assert out["count"][n] == c
        np.testing.assert_array_equal(out["input_ids"][n, :c], enc["input_ids"][n, :c].numpy())
        assert (out["input_ids"][n, c:] == 0).all()
        np.testing.assert_allclose(out["tokens"][n, :c], last[n, :c], rtol=1e-4, atol=1e-5)
        assert (out["tokens"][n, c:] == 0).all()
        for k in layers:
            np.testing.assert_allclose(out[f"layer_{k}"][n, :c], o.hidden_states[k][n, :c].double().numpy(),
                                       rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out["cls"][n], last[n, 0], rtol=1e-4, atol=1e-5)
        ref_mean = (last[n] * mask[n][:, None]).sum(0) / mask[n].sum()
        np.testing.assert_allclose(out["mean"][n], ref_mean, rtol=1e-4, atol=1e-5)
    assert out["tokens"].shape[1] == max_length >= L
    assert set(out) == set(ex.schema())
    return out


def test_bert_against_hidden_states(tiny_bert):
    ex = create_extractor("bert", weights=str(tiny_bert), max_length=24, layers=[1, 2], dtype="float32")
    out = _check_against_model(ex, tiny_bert, TEXTS, 24, (1, 2))
    assert out["count"][1] == 2  # empty text -> [CLS] [SEP]
    assert out["count"][3] == 24  # truncated
    assert out["input_ids"][4, 1] == 1  # non-Latin / emoji -> [UNK] with this tiny vocab
    assert ex.schema()["layer_1"].shape == (24, 16) and ex.schema()["input_ids"].dtype == "int32"


def test_distilbert_against_hidden_states(tiny_distilbert):
    ex = create_extractor("distilbert", weights=str(tiny_distilbert), max_length=16, layers=[1], dtype="float32")
    _check_against_model(ex, tiny_distilbert, TEXTS[:4], 16, (1,))


def test_demo_minilm_handles_any_text():
    ex = create_extractor("bert", weights="demo", max_length=32)
    assert ex.dim == 384 and ex.model.config.num_hidden_layers == 6
    out = ex.forward(ex.collate([ex.preprocess(t) for t in TEXTS]))
    assert out["tokens"].dtype == np.float16 and np.isfinite(out["tokens"].astype(np.float32)).all()
    assert out["count"][1] == 2 and out["count"][3] == 32 and out["count"][4] > 2
    # a real tokenizer maps CJK characters to real word pieces, not only [UNK] (id 100)
    assert (out["input_ids"][4, 1:out["count"][4] - 1] != 100).any()
    assert ex.weights_fingerprint().startswith("files:sha256:")


def test_text_bad_inputs(tiny_bert, tiny_distilbert):
    ex = create_extractor("bert", weights=str(tiny_bert), max_length=8)
    with pytest.raises(FeatstoreError, match="str"):
        ex.preprocess(None)
    bad = [("bert", dict(weights=str(tiny_bert), layers=[9])), ("bert", dict(weights=str(tiny_bert), max_length=1)),
           ("bert", dict(weights=str(tiny_bert), max_length=1000)), ("distilbert", dict(weights="demo")),
           ("distilbert", dict(weights=str(tiny_bert))), ("bert", dict(weights=None)),
           ("bert", dict(weights="nobody/absent-bert"))]
    for name, cfg in bad:
        with pytest.raises(FeatstoreError) as e:
            create_extractor(name, **cfg)
        assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    tok = _vocab(d)
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=20,
                                      eos_token_id=tok.sep_token_id, pad_token_id=0),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=32, patch_size=8),
                     projection_dim=12)
    CLIPModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return d


def test_clip_image_and_text_against_clipmodel(tiny_clip):
    m = CLIPModel.from_pretrained(str(tiny_clip)).eval()
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(50, 40), (40, 70)]]
    ex = create_extractor("clip-image", weights=str(tiny_clip), dtype="float32", num_regions=4)  # 4x4 patch grid
    out = ex.forward(ex.collate([ex.preprocess(i) for i in imgs]))
    px = CLIPImageProcessor.from_pretrained(str(tiny_clip))(images=imgs, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = m.visual_projection(m.vision_model(pixel_values=px).pooler_output).numpy()
    np.testing.assert_allclose(out["pooled"], ref, rtol=1e-4, atol=1e-5)
    assert out["pooled"].shape == (2, 12) and ex.schema()["pooled"].shape == (12,)

    tx = create_extractor("clip-text", weights=str(tiny_clip), dtype="float32", normalize=True)
    texts = ["the cat sat", "hello world ! funny meme", ""]
    out = tx.forward(tx.collate([tx.preprocess(t) for t in texts]))
    tok = BertTokenizerFast.from_pretrained(str(tiny_clip))
    for n, t in enumerate(texts):
        ids = torch.tensor([tok(t)["input_ids"]])
        with torch.no_grad():
            pooled = m.text_model(input_ids=ids).last_hidden_state[0, ids[0].tolist().index(tok.sep_token_id)]
            e = m.text_projection(pooled).double().numpy()
        np.testing.assert_allclose(out["pooled"][n], e / np.linalg.norm(e), rtol=1e-4, atol=1e-5)
    assert tx.max_length == 20 and tx.modality == "text" and ex.modality == "image"
    with pytest.raises(FeatstoreError):
        create_extractor("clip-image", weights=None)
