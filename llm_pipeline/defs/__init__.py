"""The Dagster layer: wires the plain stage functions to assets, partitions, checks and resources.

Only this package and `llm_pipeline/definitions.py` import dagster.
"""
