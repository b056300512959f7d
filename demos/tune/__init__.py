"""The shard-count tuner: ``python -m demos.tune`` (``--help`` for the options).

``demos.tune.workloads`` holds the workloads it runs (the demos' simulators and feature sets),
``demos.tune.measure`` the run of one setting in a child process, ``demos.tune.report`` the
recommendation and the summary's tables, and ``demos.tune.chart`` the PNG chart.
"""
