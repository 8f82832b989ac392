"""Stage 0, the ground everything stands on: user errors, atomic writes, strict configs, interrupts,
input normalisation, evaluation, plots, and the one helper for optional dependencies.

Imports nothing else of the package.
"""
