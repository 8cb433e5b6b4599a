"""The one config builder (featstore.config_types.build_dataclass) and the registries' public metadata."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest

from featstore.config_types import build_dataclass
from featstore.errors import FeatstoreError


@dataclass
class Knobs:
    size: int = 3
    name: str = "a"
    scale: Optional[float] = None


def test_build_dataclass_builds_with_defaults_and_overrides():
    assert build_dataclass(Knobs, {"size": 5}, "knobs") == Knobs(size=5)
    assert build_dataclass(Knobs, None, "knobs") == Knobs()
    assert build_dataclass(Knobs, {}, "knobs") == Knobs()


def test_build_dataclass_unknown_keys_default_message():
    with pytest.raises(FeatstoreError) as e:
        build_dataclass(Knobs, {"zz": 1, "colour": 2}, "knobs")
    assert str(e.value) == "knobs has no option 'colour'; its options are: name, scale, size"


def test_build_dataclass_unknown_message_fields():
    with pytest.raises(FeatstoreError) as e:
        build_dataclass(Knobs, {"zz": 1, "colour": 2}, "x", unknown_message="{what}|{first}|{unknown}|{known}")
    assert str(e.value) == "x|'colour'|'colour', 'zz'|name, scale, size"


def test_build_dataclass_checks_types_unless_told_not_to():
    with pytest.raises(FeatstoreError) as e:
        build_dataclass(Knobs, {"size": "big"}, "knobs")
    assert str(e.value) == "knobs option size='big' must be an int; e.g. --set size=3"
    assert build_dataclass(Knobs, {"size": "big"}, "knobs", check_types=False).size == "big"


def test_each_config_keeps_its_unknown_option_message():
    from featstore.extractors import create_extractor
    from heads.models import create_head
    from heads.rgcl import RGCLConfig
    from heads.spec import InputSpec, Task, TaskSpec
    from heads.train import TrainConfig

    with pytest.raises(FeatstoreError) as e:
        create_extractor("grid", zz=1, colour=2)
    assert str(e.value).startswith("extractor 'grid' has no option 'colour', 'zz'; valid options: ")
    with pytest.raises(FeatstoreError) as e:
        create_head("concat", InputSpec(img_dim=4, txt_dim=4), TaskSpec([Task("label", "binary", 2, ["0", "1"])]),
                    zz=1, colour=2)
    assert str(e.value).startswith("head 'concat' has no option 'colour'; its options are: ")
    with pytest.raises(FeatstoreError) as e:
        TrainConfig.from_dict({"zz": 1, "colour": 2})
    assert str(e.value).startswith("train option 'colour' is unknown; options are: amp, batch_size, bucket, ")
    with pytest.raises(FeatstoreError) as e:
        RGCLConfig.from_dict({"zz": 1})
    assert str(e.value).startswith("rgcl has no option 'zz'; its options are: backend, ce_weight")
