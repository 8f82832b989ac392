"""Stage 6, to the device: ``compress`` (the whole job), deployment targets, verification, latency,
release gates against the teacher, and the bundle that goes to the device.

Imports the stages below it (``core`` to ``quantize``).
"""
