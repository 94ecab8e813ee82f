"""The backends: interchangeable producers of the same recording events.

``fx`` traces forward symbolically; ``eager`` runs it for real (and
``eager.record`` wraps a training step of the user's own); ``compat`` is the
drop-in for PyTorch's private ``_ExecOrderTracer``.
"""
