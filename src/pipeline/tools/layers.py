"""The layer order of src/pipeline: each top-level module or package -> its rank.

Imports run from higher ranks to lower ones, never back (tests/test_layers.py checks every
import against this table); pipeline.tools.params_trail counts a call that returns to a higher
rank as a climb back up.
"""

RANKS = {
    "core": 0,  # typed params, catalog, errors, atomic io, paths, records, stage runner, headers
    "hardware": 1,  # cpu flags, device + precision, tf32, FLOP counting, peaks, peak memory
    "energy": 2, "charts": 2,
    "prepared": 3,  # the prepared-data contract every stage after prepare reads
    "models": 4,  # constructors, pretrained, weights + card, preprocessing, batched inference
    "sources": 5,  # data sources and the prepare recipe: prepare only
    "train": 5,
    "evaluate": 6, "export": 6,
    "bench": 7,
    "tools": 8, "cluster": 8,
}  # fmt: skip
