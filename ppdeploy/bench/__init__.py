"""``deploy bench``: latency, throughput, memory and load time per backend and batch size, against Paddle Inference.

Every row also carries its parity verdict (``ppdeploy.parity`` profiles on real photos), so a fast wrong answer
shows as wrong. ``--e2e`` adds the whole pipeline over a folder of photos (decode + preprocess + infer + top-k,
``Classifier.predict``), the same backend's model-only figure, and a PaddleClas-style serial loop as the anchor.

One module per job: ``run`` (orchestration), ``worker`` (the child process each backend runs in), ``report``
(settings, results, targets), ``render`` (text tables) and ``chart`` (PNG).
"""

from ppdeploy.bench.chart import write_chart
from ppdeploy.bench.report import BenchReport, BenchSettings
from ppdeploy.bench.run import run_bench

__all__ = ["BenchReport", "BenchSettings", "run_bench", "write_chart"]
