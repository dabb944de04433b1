"""The state on disk: what was done, kept so that any run can resume from it.

``ledger.py`` writes and replays ``ledger.jsonl``. Its lines are typed events
(``events.py``), whose meaning is applied in one place (``index.py``) to the records of
``record.py`` (:class:`~runner.state.record.JobRecord`, its phase and the one vocabulary
of job states), kept in bounded memory (``packed.py``) and compacted when history
outgrows state (``compaction.py``). ``lock.py`` keeps one run per folder; ``layouts.py``
reads the ledgers of a campaign's other layouts.

Imports the manifest (``layouts.py``) and the base. Must not know: the network, the run.
"""
