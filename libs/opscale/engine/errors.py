"""The errors the simulated engine raises on requests it cannot take.

They live apart from opscale.engine.sim so that module can be compiled (see opscale._native_modules):
the compiler cannot make native subclasses of built-in exceptions, and these stay ordinary Python
classes either way. opscale.engine.sim re-exports them.
"""


class EngineNotAcceptingError(RuntimeError):
    """`submit` on an engine that is draining or stopped."""


class RequestTooLargeError(ValueError):
    """A request that this engine can never serve: longer than the model allows or than its KV cache."""


class WrongRoleError(ValueError):
    """`submit` on a decode engine or `submit_prefilled` on one that is not a decode engine."""
