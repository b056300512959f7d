"""The ad-attribution demo: ``python -m demos.ads`` (``--help`` for the options).

``demos.ads.simulator`` holds the impression and click simulator, reusable on its own;
``demos.ads.report`` prints the summary as tables.
"""
