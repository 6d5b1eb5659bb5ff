"""The night's machinery around the sessions (flows/exp3.py is the recipe); which module owns what:
docs/layout.md, "The night"."""
