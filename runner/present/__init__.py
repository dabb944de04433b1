"""What a run shows and leaves: the ledger's picture, for people and for programs.

``outputs.py`` writes ``results.jsonl`` and ``summary.json`` from the ledger views it
computes (and holds the run's counters); ``report.py`` writes ``report.html`` from what
``report_data.py`` gathers, with ``report_page.py``'s style and script, ``charts.py``'s
charts and ``thumbs.py``'s thumbnails; ``dataset.py`` keeps ``metadata.jsonl`` (the folder
as an image dataset); ``plan.py`` is what ``--dry-run`` and ``--status`` print;
``progress.py`` is the live panel, the progress lines and the console log handler;
``closing.py`` is a run's closing line; ``campaign_view.py`` writes the campaign-level
files over every layout folder (``--report`` without ``--shard``).

Imports the state and the manifest (and the type of the client's statistics). Must not
know: how a run works.
"""
