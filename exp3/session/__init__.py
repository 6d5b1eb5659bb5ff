"""One session, from its lock to its record, and the grid's plan, progress and durable copy; which module owns
what: docs/layout.md, "One session"."""
