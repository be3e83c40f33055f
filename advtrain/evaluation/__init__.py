"""The evaluation protocol of thesis 3.3.2 / 5.3: metrics, suites, ``run_suite``, reports."""
from .metrics import attack_stats, distortion_grid, least_distortion, operating_characteristic, summarize
from .protocol import run_suite
from .suite import THESIS_SETTINGS, AttackSpec, full_suite, load_suite

__all__ = ["run_suite", "load_suite", "full_suite", "AttackSpec", "THESIS_SETTINGS", "attack_stats",
           "distortion_grid", "least_distortion", "operating_characteristic", "summarize"]
