"""One session: its folder and state on disk (`layout`), what it starts from (`prepare`), the run from lock to record
(`run`; `python -m exp3.session` is `__main__`), metrics.json (`record`), the grid's plan and progress (`plan`,
`progress`), the durable copy (`mirror`), provenance and the locks (`provenance`, `runlock`). Owners: docs/layout.md."""
