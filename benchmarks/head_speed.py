"""The ``head`` section of ``make bench`` alone: seconds per trial of head training with the
reused :class:`clothopt.model.head.HeadTrainer`, the paper's head and wide heads as a `wide`
study draws them (``--train-images 0``: the whole train split, as a study trains on), against
their goals; writes ``head_speed.json`` and ``.md`` beside ``bench.json``.

    python -m benchmarks.head_speed --data DIR --weights FILE [--train-images N] [--image-size PX]
"""

from __future__ import annotations

import sys

from benchmarks.bench import main

if __name__ == "__main__":
    sys.exit(main(["--sections", "head", *sys.argv[1:]], stem="head_speed", title=__doc__))
