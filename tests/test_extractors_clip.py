"""clip-image / clip-text against CLIPModel's own vision_model / text_model outputs (tiny random configs at
224 px / patch 14, the default ViT-L/14's geometry, and at 336 px); projections, LayerNorm, reductions and
crop boxes recomputed in float64 by hand."""
import numpy as np
import pytest
import torch
from PIL import Image
from test_extractors_dinov2 import _bilinear, _bilinear_aa
from test_patch_region_boxes import _ref_boxes
from transformers import BertTokenizerFast, CLIPConfig, CLIPImageProcessor, CLIPModel

from featstore.errors import FeatstoreError
from featstore.extractors import create_extractor
from featstore.extractors.clip import ClipImageConfig, ClipTextConfig, crop_window, fix_clip_text

WORDS = ["the", "cat", "sat", "on", "mat", "hello", "world", "!", "funny", "meme"]


def _save_clip(d, px, vocab_size=None, pad=0, eos=3):
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=vocab_size or 32, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=20,
                                      eos_token_id=eos, pad_token_id=pad, bos_token_id=2),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=px, patch_size=14),
                     projection_dim=12)
    CLIPModel(cfg).save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": px}, crop_size={"height": px, "width": px}).save_pretrained(d)
    return d


@pytest.fixture(scope="module", params=[224, 336])
def tiny_clip(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"clip{request.param}")
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    tok = BertTokenizerFast(vocab_file=str(d / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(d)
    return _save_clip(d, request.param, tok.vocab_size, 0, tok.sep_token_id), request.param


def _imgs():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(350, 200), (150, 450)]]


def _vision(d, imgs, attn="sdpa"):
    m = CLIPModel.from_pretrained(str(d), attn_implementation=attn).eval()
    px = CLIPImageProcessor.from_pretrained(str(d))(images=imgs, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return m, m.vision_model(pixel_values=px, output_hidden_states=True, output_attentions=attn == "eager")


def _layernorm(x, ln):
    x = np.asarray(x, dtype=np.float64)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + ln.eps) * ln.weight.detach().double().numpy() + ln.bias.detach().double().numpy()


def _windows(imgs, px):
    """The centre crop's area in original pixels, by hand: shorter side -> px, longer -> int(px*long/short),
    crop offset int((resized - px) / 2)."""
    out = []
    for im in imgs:
        w, h = im.size
        if w <= h:
            rh = int(px * h / w)
            top = int((rh - px) / 2)
            out.append((0.0, top * h / rh, float(w), (top + px) * h / rh))
        else:
            rw = int(px * w / h)
            left = int((rw - px) / 2)
            out.append((left * w / rw, 0.0, (left + px) * w / rw, float(h)))
    return out


def _cells(window, r):
    x1, y1, x2, y2 = window
    cw, ch = (x2 - x1) / r, (y2 - y1) / r
    return np.array([[x1 + j * cw, y1 + i * ch, x1 + (j + 1) * cw, y1 + (i + 1) * ch]
                     for i in range(r) for j in range(r)])


@pytest.mark.parametrize("antialias", [True, False])
def test_clip_image_against_vision_model(tiny_clip, antialias):
    d, px = tiny_clip
    g = px // 14
    imgs = _imgs()
    ex = create_extractor("clip-image", weights=str(d), dtype="float32", tokens=True, antialias=antialias)
    out = ex.forward(ex.collate([ex.preprocess(i) for i in imgs]))
    m, v = _vision(d, imgs)
    pooler = v.pooler_output.double().numpy()
    last = v.last_hidden_state.double().numpy()
    np.testing.assert_allclose(pooler, _layernorm(last[:, 0], m.vision_model.post_layernorm), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["pooler"], pooler, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["pooled"], pooler @ m.visual_projection.weight.detach().double().numpy().T,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["tokens"], last[:, 1:], rtol=1e-4, atol=1e-5)
    ref_fn = _bilinear_aa if antialias else _bilinear
    for n, win in enumerate(_windows(imgs, px)):
        np.testing.assert_allclose(out["regions"][n], ref_fn(last[n, 1:].reshape(g, g, -1), 6).reshape(36, -1),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out["boxes"][n], _ref_boxes(win, g, 6, antialias), rtol=1e-6, atol=1e-4)
    assert out["count"].tolist() == [36, 36] and out["image_size"].tolist() == [[350, 200], [150, 450]]
    s = ex.schema()
    assert s["pooler"].shape == (16,) and s["pooled"].shape == (12,) and s["tokens"].shape == (g * g, 16)
    assert s["regions"].shape == (36, 16) and s["regions"].per_item and not s["tokens"].per_item
    assert set(out) == set(s) and ex.preprocessing()["grid"] == g


def test_clip_image_layer_post_layernorm_and_attention(tiny_clip):
    d, px = tiny_clip
    g = px // 14
    imgs = _imgs()
    ex = create_extractor("clip-image", weights=str(d), dtype="float32", layer=1, post_layernorm=True,
                          num_regions=5, reduce="attention", tokens=True)
    out = ex.forward(ex.collate([ex.preprocess(i) for i in imgs]))
    m, v = _vision(d, imgs, attn="eager")
    states = _layernorm(v.hidden_states[1].double().numpy(), m.vision_model.post_layernorm)[:, 1:]
    np.testing.assert_allclose(out["tokens"], states, rtol=1e-4, atol=1e-5)
    att = v.attentions[-1].double().mean(1)[:, 0, 1:].numpy()
    for n, win in enumerate(_windows(imgs, px)):
        top = np.argsort(-att[n])[:5]
        np.testing.assert_allclose(out["regions"][n], states[n, top], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out["boxes"][n], _cells(win, g)[top], rtol=1e-5)
    np.testing.assert_allclose(out["pooler"], v.pooler_output.numpy(), rtol=1e-4, atol=1e-5)


def test_clip_text_against_text_model(tiny_clip):
    d, _ = tiny_clip
    m = CLIPModel.from_pretrained(str(d)).eval()
    tok = BertTokenizerFast.from_pretrained(str(d))
    texts = ["the cat sat", "hello world ! funny meme meme meme", ""]
    for layer in (None, 1):
        tx = create_extractor("clip-text", weights=str(d), dtype="float32", normalize=True, tokens=True, layer=layer)
        out = tx.forward(tx.collate([tx.preprocess(t) for t in texts]))
        for n, t in enumerate(texts):
            ids = tok(t)["input_ids"]
            with torch.no_grad():  # each text alone, no padding
                o = m.text_model(input_ids=torch.tensor([ids]), output_hidden_states=True)
            last = o.last_hidden_state[0].double().numpy()
            eos = last[ids.index(tok.sep_token_id)]
            np.testing.assert_allclose(out["pooler"][n], eos, rtol=1e-4, atol=1e-5)
            e = eos @ m.text_projection.weight.detach().double().numpy().T
            np.testing.assert_allclose(out["pooled"][n], e / np.linalg.norm(e), rtol=1e-4, atol=1e-5)
            states = last if layer is None else o.hidden_states[layer][0].double().numpy()
            assert out["count"][n] == len(ids)
            np.testing.assert_allclose(out["tokens"][n, :len(ids)], states, rtol=1e-4, atol=1e-5)
            assert (out["tokens"][n, len(ids):] == 0).all()
    assert tx.schema()["tokens"].shape == (20, 16) and tx.schema()["pooler"].shape == (16,)
    plain = create_extractor("clip-text", weights=str(d), dtype="float32")
    assert set(plain.schema()) == {"pooler", "pooled"}


def test_clip_text_cleans_texts_as_transformers_4s_clip_tokenizer(tiny_clip):
    """transformers 4's CLIPTokenizer with ftfy installed (Hate-CLIPper's requirements) runs ftfy.fix_text first:
    full-width letters fold, HTML entities unescape. Expected texts typed by hand; ``fix_text=False`` is the
    tokenizer on the raw text, and its recipe config leaves the option out, as sets made before it had."""
    from featstore.runner.extract import recipe_config

    import ftfy

    d, _ = tiny_clip
    tok = BertTokenizerFast.from_pretrained(str(d))
    raw = ["\uff46\uff55\uff4e\uff4e\uff59 meme", "hello&nbsp;world", "the cat sat"]
    cleaned = ["funny meme", "hello\u00a0world", "the cat sat"]
    fixed = create_extractor("clip-text", weights=str(d), dtype="float32")
    plain = create_extractor("clip-text", weights=str(d), dtype="float32", fix_text=False)
    for r, c in zip(raw, cleaned):
        assert fixed.preprocess(r)["input_ids"].tolist() == tok(c)["input_ids"]
        assert plain.preprocess(r)["input_ids"].tolist() == tok(r)["input_ids"]
    assert len(tok(raw[1])["input_ids"]) == 7 and len(tok(cleaned[1])["input_ids"]) == 4  # "&", "nbsp", ";" gone
    assert fix_clip_text(raw[0]) == cleaned[0]
    assert fixed.preprocessing()["fix_text"] == f"ftfy {ftfy.__version__}" and "fix_text" not in plain.preprocessing()
    assert recipe_config(fixed.config, "clip-text")["fix_text"] is True
    assert set(recipe_config(plain.config, "clip-text")) == set(recipe_config(fixed.config, "clip-text")) - {"fix_text"}
    assert fixed.truncation_note(["\uff46" * 30]) is None  # counted on the cleaned text: "f" * 30 is one word


def test_clip_text_counts_the_texts_cut_to_its_positions(tiny_clip):
    """The tiny tower has 20 positions: a text of 25 words (27 ids with [CLS] / [SEP]) is cut, a short one not."""
    d, _ = tiny_clip
    tx = create_extractor("clip-text", weights=str(d), dtype="float32")
    long_text = " ".join(["meme"] * 25)
    assert len(BertTokenizerFast.from_pretrained(str(d))(long_text)["input_ids"]) == 27
    assert tx.truncation_note(["the cat sat", long_text]) == (
        "1 of 2 texts are longer than max_length=20 tokens and were cut to it (the longest has 27); the model's 20 "
        "positions hold no more")
    assert tx.truncation_note(["the cat sat"]) is None


def test_crop_window_hand_computed_and_seen_by_the_processor(tmp_path):
    p = CLIPImageProcessor()  # openai/clip-vit-large-patch14's: shortest_edge 224, centre crop 224
    # 350x200 -> 392x224, crop offset 84: x in [84, 308] * 350/392 = [75, 275]
    assert crop_window(p, 350, 200) == pytest.approx((75.0, 0.0, 275.0, 200.0))
    # 150x450 -> 224x672, offset 224: y in [224, 448] * 450/672 = [150, 300]
    assert crop_window(p, 150, 450) == pytest.approx((0.0, 150.0, 150.0, 300.0))
    # a green stripe exactly at the window fills the processed image; red/blue outside never shows
    a = np.zeros((200, 350, 3), dtype=np.uint8)
    a[:, :75, 0], a[:, 75:275, 1], a[:, 275:, 2] = 255, 255, 255
    x = p(images=Image.fromarray(a), return_tensors="pt")["pixel_values"][0]
    rgb = x * torch.tensor(p.image_std)[:, None, None] + torch.tensor(p.image_mean)[:, None, None]
    assert float((rgb[1] > 0.9).float().mean()) > 0.99 and float(rgb[[0, 2]].max()) < 0.1
    small = CLIPImageProcessor(size={"shortest_edge": 20}, crop_size={"height": 32, "width": 32})
    assert crop_window(small, 40, 20) == pytest.approx((4.0, -6.0, 36.0, 26.0))  # 32 > 20: 6 rows of padding above


def test_clip_defaults_and_bad_options_are_one_line(tiny_clip):
    d, _ = tiny_clip
    assert ClipImageConfig().weights == ClipTextConfig().weights == "openai/clip-vit-large-patch14"
    assert ClipImageConfig().num_regions == 36 and ClipImageConfig().reduce == "interp"
    none = create_extractor("clip-image", weights=str(d), dtype="float32", num_regions=0)
    assert set(none.schema()) == {"pooler", "pooled"}
    cases = [("clip-image", dict(weights=None), "clip-image needs CLIP weights; pass --weights with a CLIPModel folder "
              "or a cached id (e.g. `huggingface-cli download openai/clip-vit-large-patch14`)"),
             ("clip-image", dict(weights=str(d), layer=3),
              "layer=3 is invalid for the 2-layer CLIP vision tower; choose 0..2 or leave it unset"),
             ("clip-text", dict(weights=str(d), layer=-1),
              "layer=-1 is invalid for the 2-layer CLIP text tower; choose 0..2 or leave it unset"),
             ("clip-image", dict(weights=str(d), num_regions=35),
              "num_regions=35 is not a square; reduce='interp' needs r*r regions (e.g. 36, 49) or use "
              "reduce='attention'"),
             ("clip-image", dict(weights=str(d), reduce="max"), "reduce='max' is unknown; use one of interp, attention")]
    for name, cfg, msg in cases:
        with pytest.raises(FeatstoreError) as e:
            create_extractor(name, **cfg)
        assert str(e.value) == msg
    with pytest.raises(FeatstoreError, match=r"^num_regions=10000 exceeds the \d+x\d+ patch grid; use fewer"):
        create_extractor("clip-image", weights=str(d), num_regions=10000)


def test_processor_that_does_not_match_the_tower_is_one_line(tmp_path):
    d = _save_clip(tmp_path / "m", 56)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(d)
    with pytest.raises(FeatstoreError) as e:
        create_extractor("clip-image", weights=str(d))
    assert str(e.value) == ("the CLIP processor crops 224x224 but the vision tower takes 56x56; pass a folder whose "
                            "processor matches its model")


def test_clip_sets_round_trip_through_the_store(tiny_clip, tmp_path):
    from test_extract_run import make_dataset

    from featstore.datasets import load_dataset
    from featstore.extractors import load_image
    from featstore.runner import ExtractOptions, run_extraction
    from featstore.store import open_store

    d, _ = tiny_clip
    ds = load_dataset(make_dataset(tmp_path / "data", n_images=3))
    st = open_store(tmp_path / "store", create=True)
    opts = ExtractOptions(num_workers=0, progress=False)
    for name, cfg in (("clip-image", dict(tokens=True, num_regions=4)), ("clip-text", dict(tokens=True))):
        run_extraction(st, ds, name, extractor_config=dict(weights=str(d), dtype="float32", **cfg), options=opts)
        fs = st.open(name)
        ex = create_extractor(name, weights=str(d), dtype="float32", **cfg)
        if name == "clip-image":
            keys = list(fs.keys)
            path_of = {s.image_key: s.image_path for s in ds.samples}
            ref = ex.forward(ex.collate([ex.preprocess(load_image(path_of[k])) for k in keys]))
        else:
            keys = [s.id for s in ds.samples]
            ref = ex.forward(ex.collate([ex.preprocess(s.text) for s in ds.samples]))
        got = fs.select(keys)
        assert set(fs.array_names) == set(ex.schema())
        for a in ex.schema():
            np.testing.assert_allclose(got[a], ref[a], rtol=1e-5, atol=1e-5, err_msg=f"{name} {a}")
