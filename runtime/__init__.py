"""The featurist feature runtime, built on the ``actors`` kernel."""

__all__: list[str] = []
