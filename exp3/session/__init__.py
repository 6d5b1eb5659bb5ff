"""One session: its folder and state on disk (`layout`), what its result depends on (`identity`), what it starts
from (`prepare`), the run from lock to record (`run`; `python -m exp3.session` is `__main__`), metrics.json
(`record`), provenance and the root and session locks (`provenance`, `runlock`)."""
