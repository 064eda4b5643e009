"""The training rules live with TrainConfig: a library caller who builds one in code gets the refusals
and defaults jobs/train.py gives, in the same words."""

import os

import pytest

from jobs.common.errors import UserError
from jobs.training.config import TrainConfig
from jobs.training.driver import run_training


def test_a_config_built_in_code_gets_the_commands_defaults():
    config = TrainConfig(output="models/v1/", num_classes=3, images="img", masks="masks").checked()
    assert config.class_names == ("class_0", "class_1", "class_2")
    assert config.name == "v1" and config.input_size == 256
    voc = TrainConfig(output="s3://bucket/voc", num_classes=21, voc="VOCdevkit").checked()
    assert voc.class_names[:2] == ("background", "aeroplane") and len(voc.class_names) == 21
    patches = TrainConfig(output="out", num_classes=2, images="img", masks="masks", patch_size=128).checked()
    assert patches.input_size == 128 and patches.checked() == patches  # checking twice changes nothing


def test_backbone_weights_are_named_in_full(tmp_path):
    weights = tmp_path / "vgg16.h5"
    weights.write_bytes(b"")
    relative = os.path.relpath(weights)
    config = TrainConfig(output="out", num_classes=2, voc="voc", backbone_weights=relative).checked()
    assert config.backbone_weights == str(weights)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({}, "give either --images and --masks, or --voc"),
        ({"images": "img"}, "--images needs --masks"),
        ({"voc": "voc", "patch_size": 128, "input_size": 256}, "--patch-size sets the model input: drop --input-size"),
        ({"voc": "voc", "input_size": 100}, "--input-size 100: must be a multiple of 16"),
        ({"voc": "voc", "batch_size": 3, "workers": 2}, "--batch-size 3 must be a multiple of --workers 2"),
        ({"voc": "voc", "class_names": ("a",)}, "--class-names gives 1 names for --num-classes 2"),
    ],
)
def test_contradicting_settings_are_refused_in_the_commands_words(settings, message):
    with pytest.raises(UserError) as refused:
        TrainConfig(output="out", num_classes=2, **settings).checked()
    assert str(refused.value) == message and refused.value.settings == ()


def test_run_training_refuses_before_it_starts_anything():
    with pytest.raises(UserError, match="--images needs --masks"):
        run_training(TrainConfig(output="out", num_classes=2, images="img"))
