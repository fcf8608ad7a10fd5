#!/bin/sh
# Wheels that let papermill run the figures' notebooks on a GPU machine with no network whose
# Python (3.12) already has torch, pandas, seaborn, matplotlib, scikit-learn, tqdm, pytest and
# timm, plus the usual packages of a CUDA image (aiohttp, attrs, click, packaging, psutil,
# python-dateutil, pyyaml, requests, pygments, typing-extensions...): papermill's and
# ipykernel's dependency closure minus what such an image has, at requirements.lock's versions
# (submitit added for `--launcher`). All but four are pure Python (py3-none-any, debugpy
# included); pyzmq, rpds-py, tornado and wcwidth are built for CPython 3.12 (abi3) on manylinux x86-64.
#   tools/gpu_wheels.sh [DIR]      (default .whl; needs the network, here, once)
#   PYTHON_VERSION=3.11 tools/gpu_wheels.sh DIR    (the same set for another CPython, e.g. a rehearsal here)
# then, on the GPU machine: make setup-system   (installs them with --no-index, no torch)
set -eu
DIR=${1:-.whl}
PIP=${PIP:-python3 -m pip}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
ABI=cp$(echo "$PYTHON_VERSION" | tr -d .)
PURE="
asttokens==3.0.2
comm==0.2.3
debugpy==1.8.22
entrypoints==0.4.2
executing==2.3.0
fastjsonschema==2.22.3
ipykernel==7.4.0
ipython==9.18.1
ipython_pygments_lexers==1.1.1
jedi==0.20.1
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
jupyter_client==8.10.0
jupyter_core==5.9.1
matplotlib-inline==0.2.2
nbclient==0.11.0
nbformat==5.11.1
nest-asyncio2==1.7.4
papermill==2.7.0
parso==0.8.7
pexpect==4.9.0
platformdirs==4.14.7
prompt_toolkit==3.0.53
ptyprocess==0.7.0
pure_eval==0.2.4
referencing==0.37.0
stack-data==0.6.3
submitit==1.5.4
tenacity==9.2.1
traitlets==5.16.1
"
BINARY="
pyzmq==27.3.0
rpds-py==2026.9.1
tornado==6.6.1
wcwidth==0.9.4
"
mkdir -p "$DIR"
# --no-deps: the list above is the closure; pip must not pull torch & co. for another platform.
$PIP download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp --abi "$ABI" --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$DIR" $PURE $BINARY
ls "$DIR"
