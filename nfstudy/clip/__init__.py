"""Gradient clipping by value, by global norm, and adaptive gradient clipping (AGC).

One call between ``loss.backward()`` and ``optimizer.step()``, in the shape of
Composer's functional API::

    loss.backward()
    apply_gradient_clipping(model, "adaptive", 0.01)   # or "value" | "norm"
    optimizer.step()

or a reusable clipper, for a training loop or any optimizer::

    clip = GradientClipper("adaptive", 0.01)
    clip(model)                                # after backward, before optimizer.step()
    handle = clip.attach(optimizer, model)     # or: before every optimizer.step(), by itself

Read in this order:

* :mod:`~nfstudy.clip.agc`: AGC's definition (Brock et al. 2021, eq. (3)) as small pure
  functions, ``unitwise_norm`` (with the layout assumption), ``unitwise_clip``, and the
  per-tensor ``adaptive_clip_grad_``;
* :mod:`~nfstudy.clip.fast`: the same, vectorised across parameters (what the clipper runs);
* :mod:`~nfstudy.clip.heads`: the classifier head AGC leaves unclipped, found by module;
* :mod:`~nfstudy.clip.clipper`: :class:`GradientClipper` and :func:`apply_gradient_clipping`.
"""

from .agc import AGC_EPS, adaptive_clip_grad_, unitwise_clip, unitwise_norm
from .clipper import GradientClipper, apply_gradient_clipping
from .heads import find_head

__all__ = [
    "AGC_EPS",
    "GradientClipper",
    "adaptive_clip_grad_",
    "apply_gradient_clipping",
    "find_head",
    "unitwise_clip",
    "unitwise_norm",
]
