"""Training, in the session process: Ultralytics' trainer under the defaults policy (`training`), exp3's trainer
classes and hooks (`trainers`), training-only internal masking (`masking`), the starting weights (`weights`), and
Ultralytics kept offline with only the configured integrations on (`offline`, `integrations`)."""
