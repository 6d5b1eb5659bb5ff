"""exp3: occlusion-robustness experiments with training-only internal masking."""
__version__ = "0.1.0"
SCHEMA_VERSION = 2
"""`schema_version` of metrics.json and the predictions files, and part of every session's key: a folder written
in another format is stale (trained again), never read as done. 2: every field of metrics.json required."""
