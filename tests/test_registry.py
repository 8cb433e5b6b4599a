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
    assert str(e.value).startswith("train option 'colour' is unknown; options are: amp, auroc_batch, batch_size, bucket, ")
    with pytest.raises(FeatstoreError) as e:
        RGCLConfig.from_dict({"zz": 1})
    assert str(e.value).startswith("rgcl has no option 'zz'; its options are: backend, bank_grad, ce_weight")


def test_registry_info_carries_what_was_registered():
    from featstore.registry import ComponentInfo, Registry

    reg = Registry("widget")

    @reg.register("b", Knobs, help="the b widget", colour="red")
    def build_b(config):
        return ("b", config)

    @reg.register("a")
    def build_a():
        """First docstring line.

        More."""
        return "a"

    assert reg.info("b") == ComponentInfo("b", Knobs, "the b widget", {"colour": "red"})
    assert reg.info("a").help == "First docstring line." and reg.info("a").config_cls is None
    assert [i.name for i in reg.infos()] == ["a", "b"]
    assert reg.create("b", Knobs(size=1)) == ("b", Knobs(size=1))
    with pytest.raises(TypeError):
        reg.info("b").meta["colour"] = "blue"  # read-only
    with pytest.raises(FeatstoreError) as e:
        reg.info("c")
    assert str(e.value) == "unknown widget 'c'; choose one of: a, b"
    with pytest.raises(ValueError):
        reg.register("a")(build_a)


def test_head_needs_are_public_metadata_and_checked_by_create_head():
    from heads.models import HEADS, create_head
    from heads.spec import InputSpec, Task, TaskSpec

    # written from each head's documented inputs, not read back from the classes
    assert HEADS.info("vilbert").meta["needs"] == {"img_regions", "txt_tokens"}
    assert HEADS.info("concat").meta["needs"] == {"img_pooled", "txt_pooled"}
    assert HEADS.info("text-only").meta["needs"] == {"txt_pooled"}
    assert HEADS.info("visualbert").meta["needs"] == {"img_regions", "txt_ids"}  # it embeds the token ids itself
    assert all(set(i.meta["needs"]) <= {"img_regions", "img_pooled", "txt_tokens", "txt_pooled", "txt_ids"}
               for i in HEADS.infos())
    spec = TaskSpec([Task("label", "binary", 2, ["0", "1"])])
    with pytest.raises(FeatstoreError) as e:
        create_head("vilbert", InputSpec(img_dim=8, txt_dim=8, img_regions=4, txt_tokens=0, txt_pooled=True), spec)
    assert str(e.value).startswith("head 'vilbert' needs text tokens but the text feature set gives pooled vectors only")


def test_heads_list_prints_each_heads_needs():
    from click.testing import CliRunner

    from cli.heads_cli import main
    from heads.models import HEADS

    out = CliRunner().invoke(main, ["list"]).output
    blocks = {}
    for line in out.splitlines():
        if not line.startswith(" "):
            name = line.split(":")[0]
        elif line.startswith("    (needs "):
            blocks[name] = set(line[len("    (needs "):-1].split(", "))
    assert blocks == {i.name: set(i.meta["needs"]) for i in HEADS.infos()}
    assert blocks["gnn"] == {"img_regions", "txt_tokens"}


def test_extractors_registered_through_the_same_registry():
    from featstore.extractors import EXTRACTORS, create_extractor
    from featstore.extractors.grid import GridConfig

    info = EXTRACTORS.info("grid")
    assert info.config_cls is GridConfig and info.help.startswith("CNN last stage pooled")
    ex = create_extractor("grid", seed=3)
    assert ex.name == "grid" and isinstance(ex.config, GridConfig) and ex.config.seed == 3
    with pytest.raises(FeatstoreError) as e:
        create_extractor("nope")
    assert str(e.value).startswith("unknown extractor 'nope'; choose one of: bert, clip-image, ")
