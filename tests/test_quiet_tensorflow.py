"""Which of TensorFlow's start-up lines reach stderr, by the level the user set."""

from __future__ import annotations

import pytest

from unet_core.quiet_tensorflow import noise

ONEDNN = (
    "I0000 00:00:1796554145.985120   31350 port.cc:153] oneDNN custom operations are on. You may see "
    "slightly different numerical results due to floating-point round-off errors.\n"
)
WARNING = "W0000 00:00:1796554145.985120   31350 gpu_device.cc:2344] Cannot dlopen some GPU libraries.\n"
ERROR = "E0000 00:00:1796554145.985120   31350 cuda_executor.cc:1228] INTERNAL: CUDA error\n"


@pytest.mark.parametrize(
    ("level", "shown"),
    [
        ("0", [ONEDNN, WARNING, ERROR]),
        ("1", [WARNING, ERROR]),
        ("2", [ERROR]),
        ("3", []),
    ],
)
def test_abseil_lines_below_the_tensorflow_log_level_are_dropped(monkeypatch, level, shown):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
    assert [line for line in (ONEDNN, WARNING, ERROR) if not noise(line, expect_gpu=True)] == shown


def test_lines_that_are_not_abseils_always_pass(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    assert not noise("Epoch 1/3: loss 0.52\n", expect_gpu=True)
    assert not noise("Image 0000 of 12 has no mask\n", expect_gpu=True)
