"""nfstudy: what does BatchNorm really do, and can deep ResNets train without it?

Reproductions of Bjorck et al. 2018 ("Understanding Batch Normalization") and of the
Normalizer-Free ResNet / NFNet papers (Brock et al. 2021). See README.md.
"""

__version__ = "0.1.0"

from .compat import install_import_hook as _install_import_hook  # noqa: E402

_install_import_hook()  # `import nfstudy, timm` works beside a torchvision built for another torch (nfstudy.compat)
