"""Stage 2, making samples from the teacher: label-text embeddings, the generator and its noisy layer,
the teacher's BatchNorm probe, augmentation, and the bounded sample memory.

Imports only ``core`` and ``inputs``.
"""
