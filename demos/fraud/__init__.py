"""The card-fraud demo: ``python -m demos.fraud`` (``--help`` for the options).

``demos.fraud.simulator`` holds the transaction simulator, reusable on its own.
"""
