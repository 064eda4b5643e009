"""What the training loop decides on its own: when to validate, and when to warn that a class present
in the validation truth stays at IoU 0."""

import numpy as np

from jobs.training.config import TrainConfig
from jobs.training.loop import collapsed, estimate, not_learning, validates, validation_rhythm
from unet_core.metrics import confusion_matrix, unlearnt_classes

CONFIG = TrainConfig(output="model", num_classes=3, class_names=("background", "cell", "membrane"), epochs=9)


def mapped_away() -> np.ndarray:
    """Validation truth holds all three classes; the model, trained on masks where a mask map sent
    `membrane` to `background`, predicts only the other two."""
    truth = np.array([[0, 0, 1, 1, 2, 2]])
    predicted = np.array([[0, 0, 1, 0, 0, 0]])
    return confusion_matrix(truth, predicted, 3)


def test_a_class_present_in_the_truth_and_never_predicted_right_is_unlearnt():
    assert unlearnt_classes(mapped_away()).tolist() == [2]
    absent = confusion_matrix(np.array([0, 0, 1]), np.array([0, 2, 1]), 3)  # class 2 only falsely predicted
    assert unlearnt_classes(absent).tolist() == []


def test_the_warning_names_the_class_and_the_causes_after_a_third_of_the_run():
    assert not_learning(mapped_away(), CONFIG, epoch=2) is None  # 2 of 9 epochs: too early to say
    warning = not_learning(mapped_away(), CONFIG, epoch=3)
    assert warning.startswith("warning: membrane still at IoU 0 on the validation set at epoch 3/9")
    assert "--mask-map" in warning and "--class-weights" in warning and "--epochs" in warning
    learnt = confusion_matrix(np.array([0, 1, 2]), np.array([0, 1, 2]), 3)
    assert not_learning(learnt, CONFIG, epoch=9) is None
    short = TrainConfig(output="model", num_classes=3, class_names=CONFIG.class_names, epochs=2)
    assert not_learning(mapped_away(), short, epoch=1) is None  # never on a run's first epoch
    assert not_learning(mapped_away(), short, epoch=2) is not None


def test_chosen_epochs_and_always_the_last_are_validated():
    assert [e for e in range(1, 9) if validates(e, 3, 8)] == [3, 6, 8]
    assert [e for e in range(1, 5) if validates(e, 1, 4)] == [1, 2, 3, 4]
    assert validates(5, None, 8)  # the rhythm is still to be chosen: this epoch is measured


def test_the_default_rhythm_keeps_validation_under_a_tenth_of_the_run():
    assert validation_rhythm(train_seconds=100, validation_seconds=5) == 1  # 5/105: under a tenth already
    assert validation_rhythm(train_seconds=30, validation_seconds=20) == 6  # the new user's 10-23 s of 20-50 s
    for train, validation in ((30, 20), (7, 3), (1, 9)):
        every = validation_rhythm(train, validation)
        assert validation / (every * train + validation) <= 0.1 + 1e-9
        assert every == 1 or validation / ((every - 1) * train + validation) > 0.1  # and no rarer than needed


def test_the_estimate_counts_the_validations_the_rhythm_leaves():
    # after epoch 2 of 10 at every 3: epochs 3, 6, 9 and the last validated; 8 x 40 s + 4 x 10 s = 6 min
    assert estimate(2, 10, 3, train_seconds=40.0, validation_seconds=10.0) == (
        "an epoch trains in 40.0 s here (validation 10.0 s): the 8 left (4 validated), about 6 min"
    )
    assert "validation not yet timed" in estimate(2, 10, 3, train_seconds=40.0, validation_seconds=0.0)


def test_a_model_finding_one_class_only_is_called_collapsed_from_a_third_of_the_run():
    """Issue 32: a sparse-foreground run sat at all-background for a whole run with only the not-learning
    warning; a collapse is now named as such, with the flags to change."""
    config = CONFIG
    all_background = np.array([[90, 0, 0], [8, 0, 0], [2, 0, 0]])
    assert collapsed(all_background, config, 2, 0.84, 0.80) is None  # a third of 9 epochs is 3
    line = collapsed(all_background, config, 3, 0.84, 0.80)
    assert line.startswith(
        "warning: training collapsed: no validation pixel of any class but background is found at epoch 3/9 "
        "(train loss 0.8400 as this attempt began, 0.8000 now)."
    )
    assert "--learning-rate" in line and line.endswith("--stop-on-collapse ends such a run with status 5")
    strays = np.array([[88, 2, 0], [8, 0, 0], [1, 1, 0]])  # a few pixels predicted elsewhere, none found
    assert "any class but background is found" in collapsed(strays, config, 5, 0.84, 0.80)
    assert collapsed(np.array([[90, 0, 0], [4, 4, 0], [2, 0, 0]]), config, 5, 0.84, 0.5) is None  # two classes found
    assert collapsed(np.array([[100, 0, 0], [0, 0, 0], [0, 0, 0]]), config, 5, 0.8, 0.8) is None  # truth of one
