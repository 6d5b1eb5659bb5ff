"""Training, in the session process; which module owns what: docs/layout.md, "Training"."""
