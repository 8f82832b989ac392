"""Stage 3, teaching the student: the run's config, the schedule planner, the training loop (engine),
several processes, mixed precision and device use, progress, losses, checkpoints, and ``distill`` itself.

Imports ``core``, ``inputs``, ``zoo`` and ``synthesis``.
"""
