import importlib
import subprocess
import sys

import pytest
import torch


def test_torchvision_imports_and_its_pure_python_parts_work():
    from nfstudy.compat import import_torchvision

    tv = import_torchvision()
    assert tv is sys.modules["torchvision"]
    model = tv.models.resnet18(num_classes=10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    crop = tv.transforms.RandomCrop(32, padding=4)
    assert crop(torch.zeros(3, 32, 32)).shape == (3, 32, 32)
    assert hasattr(tv.datasets, "CIFAR10")


def test_plain_import_after_nfstudy_in_a_fresh_interpreter():
    # On a CPU torch with a CUDA torchvision a bare `import torchvision` raises
    # "operator torchvision::nms does not exist"; after nfstudy's import it works.
    code = (
        "import warnings; warnings.simplefilter('ignore');"
        "from nfstudy.compat import import_torchvision, torchvision_ops_available;"
        "import_torchvision(); import torchvision;"
        "print(torchvision.__version__, torchvision_ops_available())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    version, ops = out.stdout.split()
    assert version.startswith(importlib.metadata.version("torchvision").split("+")[0])
    assert ops in ("True", "False")


def test_compiled_ops_missing_raise_torchvisions_own_error():
    from nfstudy.compat import import_torchvision, torchvision_ops_available

    tv = import_torchvision()
    if torchvision_ops_available():
        pytest.skip("a matching torchvision install: its compiled ops load")
    try:
        tv.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)
    except RuntimeError as error:
        assert "Couldn't load custom C++ ops" in str(error)
    else:
        raise AssertionError("nms ran without its compiled op")


@pytest.mark.parametrize("first", ["import nfstudy", "import nfstudy.data", "from nfstudy import claims"])
def test_importing_nfstudy_is_enough_for_timm_and_torchvision(first):
    # The promise of nfstudy.compat: any import of nfstudy before timm (which imports
    # torchvision) works on a CPU torch beside a CUDA torchvision, with no explicit call.
    code = (
        f"import warnings; warnings.simplefilter('ignore'); {first}; import sys;"
        "assert 'torchvision' not in sys.modules;"  # nothing imported until asked for
        "import timm, torchvision, torchvision.transforms;"
        "assert timm.create_model('resnet18', num_classes=3) is not None;"
        "assert torchvision.__spec__.name == 'torchvision' and torchvision.__spec__.origin.endswith('__init__.py');"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
