"""The trained test instrument refuses to serve when it does not detect (so nobody chases the metric code)."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_an_undertrained_instrument_is_refused_in_one_line(tiny_yolo_checkpoint: Path, tiny_data_yaml: Path,
                                                           check_instrument, tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception) as failure:
        check_instrument(tiny_yolo_checkpoint, tiny_data_yaml, tmp_path)  # one epoch at 64 px detects nothing
    message = str(failure.value)
    assert message.startswith("test instrument undertrained: mAP50 0.0") and "ingredients at 0.25" in message
    assert "not a metric bug" in message and "\n" not in message

