"""Benchmarks for revproxy: ``bench.run`` measures nginx direct, V2Ray and revproxy side by side
on loopback (``scripts/bench``); ``bench.micro`` times the sans-IO codecs in-process."""
