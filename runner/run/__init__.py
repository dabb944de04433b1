"""One run: the jobs of a campaign taken to their end.

``engine.py`` wires a run: its connection (``connect.py``), the work of other layouts
first (``adopt.py``), then the feed (``feed.py``), which starts jobs in order once they
have their places (``slots.py``, ``budget.py``). ``jobs.py`` moves each job through its
life: submission (``submit.py``), the end of its task (``poller.py`` paces the polls,
``schedule.py`` and ``completion.py`` say when one is worth it), download
(``download.py``). ``exits.py`` says how the run ended.

Imports every layer below. Must not know: the command line.
"""
