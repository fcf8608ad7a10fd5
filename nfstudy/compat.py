"""torchvision on a torch build it was not compiled for.

torchvision ships compiled operators (``torchvision::nms``, ``roi_align``, ...) in
``torchvision/_C.so``. When that library cannot load (a CUDA build of torchvision
beside a CPU build of torch, as ``pip install torch==2.13.0 torchvision==0.28.0``
gives on a machine with a local CPU torch wheel), torchvision itself copes: every
compiled-op registration is guarded by ``extension._has_ops()``, *except* two
``torch.library.register_fake("torchvision::nms" / "torchvision::qnms")`` calls in
``torchvision/_meta_registrations.py``, which raise
``RuntimeError: operator torchvision::nms does not exist`` and abort the whole
``import torchvision``.

:func:`import_torchvision` retries the import with those registrations skipped for
operators that do not exist. Everything pure-Python (datasets, transforms, models,
utils) then works; the compiled ops stay absent and raise torchvision's own
"Couldn't load custom C++ ops" error if called (nfstudy never calls them). On a
proper install the first plain import succeeds and nothing is patched.

Import nfstudy (or call this function) before ``import torchvision`` in your own code
on such a machine: once it has succeeded, ``import torchvision`` finds the module.
"""

from __future__ import annotations

import functools
import sys
import warnings
from types import ModuleType

import torch

__all__ = ["TorchvisionOpsUnavailable", "import_torchvision", "torchvision_ops_available"]


class TorchvisionOpsUnavailable(RuntimeWarning):
    """torchvision imported without its compiled operators (filter it by this class)."""


def _op_exists(qualname: str) -> bool:
    namespace, _, name = qualname.partition("::")
    try:
        getattr(getattr(torch.ops, namespace), name.split(".")[0])
    except (AttributeError, RuntimeError):
        return False
    return True


def _forget_partial_import() -> None:
    # A failed import leaves half-initialised torchvision modules behind; drop them
    # so the retry executes every module again from the top.
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


@functools.cache
def import_torchvision() -> ModuleType:
    """Import torchvision, tolerating compiled operators that cannot load."""
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::" not in str(error) or "does not exist" not in str(error):
            raise
        _forget_partial_import()
    else:
        return torchvision

    original_register_fake = torch.library.register_fake

    def register_fake_if_op_exists(op, *args, **kwargs):
        if isinstance(op, str) and op.startswith("torchvision::") and not _op_exists(op):
            func = args[0] if args and callable(args[0]) else kwargs.get("func")
            return func if func is not None else (lambda fn: fn)  # used as a decorator
        return original_register_fake(op, *args, **kwargs)

    torch.library.register_fake = register_fake_if_op_exists
    try:
        import torchvision
    finally:
        torch.library.register_fake = original_register_fake
    warnings.warn(
        f"torchvision {torchvision.__version__} could not load its compiled operators for "
        f"torch {torch.__version__} (a CUDA torchvision beside a CPU torch?). Datasets, "
        "transforms and models work; torchvision.ops (nms, roi_align, ...) do not. "
        "Install the torchvision build that matches your torch to get them.",
        TorchvisionOpsUnavailable,
        stacklevel=2,
    )
    return torchvision


def torchvision_ops_available() -> bool:
    """True when torchvision's compiled operators loaded (a matching install)."""
    return import_torchvision().extension._has_ops()
