"""Out-of-memory classification and the half-batch retry (no GPU needed)."""

from __future__ import annotations

from exp3.runner import DEFAULT_BATCH, is_out_of_memory, oom_retry_batch


def test_out_of_memory_is_recognised_from_error_or_log_tail() -> None:
    assert is_out_of_memory({"error": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"})
    assert is_out_of_memory({"error": "training exited with code 1",
                             "train_log_tail": "torch.OutOfMemoryError: CUDA out of memory"})
    assert not is_out_of_memory({"error": "FileNotFoundError: weights missing", "train_log_tail": "..."})
    assert not is_out_of_memory(None)


def test_half_batch_retry() -> None:
    assert oom_retry_batch(None) == DEFAULT_BATCH // 2
    assert oom_retry_batch(6) == 3
    assert oom_retry_batch(1) == 1
