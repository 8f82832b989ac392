"""The generator's width in a planned run: narrower for larger images, and narrower again when the budget on this
device affords too few synthetic samples at that width (the planner measures each width it tries)."""

from __future__ import annotations

from typing import Any, Collection

from .config import DistillConfig

# The generator's decoder costs about 27·ngf²·H·W multiply-adds per image (a 3×3 convolution after each ×2
# upsampling), and on a CPU it, not the teacher, dominates a generator step: at 3×64×64 with ngf 64 it took 1.7 s
# of a 2.3 s step for 60 images, the teacher 0.04 s. With a budget the planner narrows it for larger images, as
# measured at 600 s (BENCHMARKS.md §9): at 3×64×64 ngf 16 > 32 > 64 (0.755, 0.70, 0.63 top-1; teacher 0.916), at
# 3×32×32 ngf 64 ≈ 32 (0.936, 0.924; teacher 0.951). Largest image area (H·W) for each width:
NGF_BY_AREA = ((32 * 32, 64), (48 * 48, 32))
NARROWEST_NGF = 16
# The same trade on a slower device or a shorter budget: when a budgeted plan makes fewer synthetic samples than
# this per class, the generator is halved (down to NARROWEST_NGF) and measured again, and the narrower plan is kept
# when it makes at least NARROWING_GAIN times the samples. Measured on an AVX2-only 2-core EPYC, photo32, 150 s
# (BENCHMARKS.md §12): ngf 64 made 378 samples and reached 0.336/0.596/0.598 top-1 over seeds 0-2 (mean 0.510);
# ngf 32 made 486-702 and reached 0.776/0.639/0.498 (mean 0.638): better on average, inside the seeds' spread.
# A 600 s run on the faster CPU of the ngf rule made 3 024 at ngf 64 (kept).
MIN_SAMPLES_PER_CLASS = 150
NARROWING_GAIN = 1.2
# Only where the first measurement took less than this share of the budget: the digits test teacher at 40 s measured
# for 8.3 s, and a second measurement left its run one epoch and 10 KD steps (a chance-level student).
NARROWING_MEASURE_SHARE = 0.1


def _planned(config: DistillConfig, user_set: Collection[str]) -> bool:
    """Whether the planner chooses the width: a budgeted, planned run whose user did not set ``ngf``."""
    return "ngf" not in user_set and config.time_budget is not None and config.schedule != "fixed"


def narrower_ngf(plan: Any, config: DistillConfig, user_set: Collection[str], num_classes: int) -> int | None:
    """The narrower generator width to try for a budgeted ``plan`` made at ``config.ngf`` that makes too few samples
    (MIN_SAMPLES_PER_CLASS), or None: enough samples, the narrowest width, a width the user set, or no budget."""
    if not _planned(config, user_set) or config.ngf // 2 < NARROWEST_NGF or \
            plan.expected_samples >= MIN_SAMPLES_PER_CLASS * num_classes:
        return None
    return config.ngf // 2


def planned_ngf(config: DistillConfig, user_set: Collection[str], input_shape: tuple[int, int, int]) -> int:
    """The generator width a budgeted run uses: the user's, else NGF_BY_AREA's for the image (never wider than the
    configured one). Without a budget: the configured one."""
    if not _planned(config, user_set):
        return config.ngf
    _, height, width = input_shape
    width_for_area = next((n for area, n in NGF_BY_AREA if height * width <= area), NARROWEST_NGF)
    return min(config.ngf, width_for_area)
