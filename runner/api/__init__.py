"""The API: how a request reaches it, when it may leave, and what its answer means.

``client.py`` sends, through the request gate of ``limits.py``; ``answers.py`` validates
what came back; ``outcome.py`` classifies every answer once (the retry policy);
``callback.py`` receives webhooks; ``refcheck.py`` asks reference-image hosts.

Imports the manifest (``refcheck.py`` reads a campaign) and the base. Must not know: the
ledger, the state of jobs, the run.
"""
