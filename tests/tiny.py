"""The tiny proxy of the test sweeps: the smallest model that still learns (a run takes seconds on a CPU)."""

TINY_MODEL = """[model]
width = 32
depth = 2
n_heads = 2
seq_len = 16
base_width = 32
"""
