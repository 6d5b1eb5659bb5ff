"""The numbers: evaluation, metrics, mAP stats, the metric vocabulary, statistics; docs/layout.md, "The numbers"."""
