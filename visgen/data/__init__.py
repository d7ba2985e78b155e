"""Data: embedded sources, procedural scenes, TFDS sources and grain pipelines.

The registry (`get_source`) and pipelines are added in later commits.
"""
