"""What every stage shares: command lines, settings, atomic writes, tables, worker processes, image decoding, the
taxonomy and label sets, crawl folders, and the readers of artifacts several stages read (pixel and feature shards).

Stages import from here, never from another stage's module (tests/test_dvc_pipeline.py checks it).
"""
