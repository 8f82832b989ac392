"""``nayer-edge demo``: the main job on a built-in teacher (scikit-learn's handwritten digits)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.progress import Progress
from ..deploy.compress import compress
from ..distill.config import DistillConfig, chosen_keys, load_config
from .digits import ensure_digits_teacher


def demo(out_dir: str | Path = "runs/demo", *, config: DistillConfig | None = None,
         show_progress: bool | Progress = True, cache_dir: Path | None = None, target: str = "cpu-x86",
         resume: bool = False, user_set: Any = None, clock_start: float | None = None) -> dict[str, Any]:
    """Train (once, cached) the digits teacher, then compress it for ``target`` with no access to its training
    images: distil, quantize, export, verify; teacher vs student top-1 on the held-out real digits."""
    teacher = ensure_digits_teacher(cache_dir)  # trained once and cached; not charged to the budget
    return compress(teacher.teacher_path, target=target, out_dir=out_dir,
                    config=config or load_config("demo-digits"), eval_data=teacher.eval_path,
                    show_progress=show_progress, cache_dir=cache_dir, resume=resume,
                    user_set=chosen_keys("demo-digits") if user_set is None and config is None else user_set,
                    clock_start=clock_start)
