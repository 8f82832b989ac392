"""Stage 1, what the user brings: the teacher (TorchScript, exported programs, state dicts) and labelled
evaluation data.

Imports only ``core``.
"""
