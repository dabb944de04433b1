"""The manifest: what a campaign asks for, read and checked before anything is sent.

A YAML campaign or a JSONL job list becomes a :class:`~runner.manifest.campaign.Campaign`
(``campaign.py``): its settings (``settings.py``, with ``durations.py``), its jobs expanded
and checked field by field (``jobspec.py``, ``fields.py``, streamed by ``joblist.py`` from
``yamldoc.py``'s tree, every error worded by ``messages.py``), the names its images get
(``naming.py``) and, for a shard, which jobs are its (``shards.py``).

The bottom layer: it imports only :mod:`runner.errors`. Must not know: the API, the
ledger, the run.
"""
