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


def test_matching_sets_other_extractors_and_no_image_set_get_no_note():
    assert image_feature_notes("p", SPEC, _meta("grid", {"preprocess": "mmf-hateful-memes"})) == []
    assert image_feature_notes("p", SPEC, _meta("clip-image", {})) == []
    assert image_feature_notes("p", SPEC, {"text": {"name": "t"}}) == []
    assert image_feature_notes("p", {}, _meta("grid", {})) == []
