"""``heads.preset_inputs.image_feature_notes`` on the recipe fields a loaded image set carries: a set
recorded before an option existed counts as that option's default; another extractor gets no note."""
from heads.preset_inputs import image_feature_notes

SPEC = {"grid": {"preprocess": "mmf-hateful-memes"}}


def _meta(extractor, config):
    return {"image": {"name": "g", "version": "v1", "extractor": extractor, "config": config}}


def test_a_set_recorded_before_the_option_reads_as_its_default():
    notes = image_feature_notes("p", SPEC, _meta("grid", {"backbone": "resnet152", "grid_size": 6}))
    assert notes == ["note: preset p reads grid sets extracted with preprocess=mmf-hateful-memes (its source's "
                     "input); image set g@v1 has preprocess=whole: extract one with `featstore extract --extractor "
                     "grid --set preprocess=mmf-hateful-memes` to train on that input"]


def test_a_clip_text_set_made_before_fix_text_reads_as_raw_text():
    """clip-text's fix_text (ftfy, as CLIP's tokenizer) defaults to True, but a set whose recipe predates it
    was tokenised raw: ABSENT_MEANS makes it read as fix_text=False, so the Hate-CLIPper presets note it."""
    from heads.presets import load_preset

    spec = load_preset("hateclipper-align").text_features
    assert spec == {"clip-text": {"dtype": "float32", "fix_text": True}}
    meta = {"text": {"name": "t", "version": "v0", "extractor": "clip-text", "config": {"dtype": "float32"}}}
    assert image_feature_notes("hateclipper-align", spec, meta, side="text") == [
        "note: preset hateclipper-align reads clip-text sets extracted with fix_text=true (its source's input); "
        "text set t@v0 has fix_text=false: extract one with `featstore extract --extractor clip-text --set "
        "fix_text=true` to train on that input"]
    meta["text"]["config"]["fix_text"] = True
    assert image_feature_notes("hateclipper-align", spec, meta, side="text") == []


def test_matching_sets_other_extractors_and_no_image_set_get_no_note():
    assert image_feature_notes("p", SPEC, _meta("grid", {"preprocess": "mmf-hateful-memes"})) == []
    assert image_feature_notes("p", SPEC, _meta("clip-image", {})) == []
    assert image_feature_notes("p", SPEC, {"text": {"name": "t"}}) == []
    assert image_feature_notes("p", {}, _meta("grid", {})) == []


def test_text_features_note_a_text_set_stored_in_another_dtype(tmp_path):
    """vilbert-hm-direct's text_features ({"bert": {"dtype": "float32"}}, MMF's fp32 text layers) against text
    sets extracted by `featstore extract` at float16 and at float32, read back from the store's recipes."""
    from cli.featstore_cli import main as featstore
    from cli_helpers import extract_args, invoke, make_hm_folder

    from heads.preset_inputs import store_image_notes
    from heads.presets import load_preset

    data, store = make_hm_folder(tmp_path / "data"), tmp_path / "store"
    invoke(featstore, extract_args(data, store, "bert", "--name", "b32"))  # BERT: dtype float32
    invoke(featstore, ["extract", "--dataset", data, "--extractor", "bert", "--store", store, "--workers", 0,
                       "--quiet", "--weights", "demo", "--set", "max_length=16", "--name", "b16"])  # float16
    p = load_preset("vilbert-hm-direct")
    assert p.text_features == {"bert": {"dtype": "float32"}} and p.image_features == {}
    assert store_image_notes(p.name, p.text_features, str(store), ["b32"], "text") == []
    (note,) = store_image_notes(p.name, p.text_features, str(store), ["b16"], "text")
    from featstore.store import open_store

    version = open_store(store).open("b16").version
    assert note == (f"note: preset vilbert-hm-direct reads bert sets extracted with dtype=float32 (its source's "
                    f"input); text set b16@{version} has dtype=float16: extract one with `featstore extract "
                    f"--extractor bert --set dtype=float32` to train on that input")


def test_a_preset_naming_an_unknown_text_extractor_is_one_line(tmp_path):
    import json

    import pytest

    from featstore.errors import FeatstoreError
    from heads.presets import load_preset

    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "source": "here", "head": "concat",
                                "text_features": {"bret": {"dtype": "float32"}}}))
    with pytest.raises(FeatstoreError) as err:
        load_preset(str(path))
    assert str(err.value).startswith(f"preset {path}: text_features names extractor 'bret', which featstore does "
                                     "not have (extractors: ")
