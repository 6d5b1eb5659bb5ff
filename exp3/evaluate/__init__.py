"""The numbers: one split evaluated from a checkpoint (`evaluation`), ingredient-list and detection P/R/F1
(`metrics`), mAP from the validator's per-image stats (`mapstats`), the metric vocabulary and mPC/rPC
(`severity`), and the paired-statistics engine the report resamples with (`stats`)."""
