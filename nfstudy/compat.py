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

Importing nfstudy (any part of it) is enough on such a machine: it installs an import
hook (:func:`install_import_hook`) that routes the first ``import torchvision`` of the
process, whoever makes it (timm, your code), through :func:`import_torchvision`. The
hook costs nothing until then and removes itself after that first import; torch and
torchvision are not imported by ``import nfstudy`` itself.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

__all__ = ["TorchvisionOpsUnavailable", "import_torchvision", "install_import_hook", "torchvision_ops_available"]


class TorchvisionOpsUnavailable(RuntimeWarning):
    """torchvision imported without its compiled operators (filter it by this class)."""


def _op_exists(qualname: str) -> bool:
    import torch

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
    import torch

    _remove_import_hook()
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


class _Loaded(importlib.abc.Loader):
    """The loader of a module that is already imported: the import system gets it as is."""

    def __init__(self, module: ModuleType):
        self.module, self.spec = module, module.__spec__

    def create_module(self, spec):
        return self.module

    def exec_module(self, module) -> None:
        module.__spec__ = self.spec  # the import system set ours; the module keeps its own


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    """Routes the first ``import torchvision`` through :func:`import_torchvision`."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        module = import_torchvision()  # removes this hook first: the import below it is a plain one
        spec = module.__spec__
        return importlib.machinery.ModuleSpec(name, _Loaded(module), origin=spec.origin if spec else None, is_package=True)


def _remove_import_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchvisionHook)]


def install_import_hook() -> None:
    """Make the next ``import torchvision`` of this process go through
    :func:`import_torchvision` (nothing to do once torchvision is imported)."""
    if "torchvision" in sys.modules or any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionHook())
