"""The sharding tool: raw video datasets in their publishers' layouts -> WebDataset tar shards.

Run as `python -m shards <dataset> --root RAW --split SPLIT --out OUT`; `verify`, `merge` and
`synth` are subcommands too. `__version__` is recorded in every manifest so that shards can be
traced back to the tool that wrote them.
"""

__version__ = "0.2.0"  # 0.2: a sha256 digest member per sample, frame counts per shard
