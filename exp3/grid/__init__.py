"""The night's machinery around the sessions: the command line (`cli`), the sessions a run plans (`plan`), the
slots and jobs (`jobs`), one session as a subprocess (`runner`), what the Prefect UI shows (`live`, `progress`),
the flow's process environment (`flowenv`) and the durable copy (`mirror`). flows/exp3.py is the recipe."""
