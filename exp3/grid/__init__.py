"""The night's machinery around the sessions: the command line (`cli`), the slots and jobs (`jobs`), one session as
a subprocess (`runner`), what the Prefect UI shows (`live`) and the flow's process environment (`flowenv`).
flows/exp3.py is the recipe."""
