"""The built-in SYNTHETIC demo crawl (`python -m demo.crawl`, run by `make demo`): not a pipeline stage."""
