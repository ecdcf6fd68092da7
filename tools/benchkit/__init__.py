"""The parts of tools/bench.py: common constants, measurements, the test video, the runs (a, b, c),
the measuring children, the combinations, the report."""
