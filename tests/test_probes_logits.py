"""The output-logit gradient probe and what it says about one-class predictions."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nfstudy.models import cifar_resnet
from nfstudy.probes import dominant_class, epoch_logit_gradients, logit_gradients


# The probe's float32 softmax - onehot against float64 of the same logits, and against
# autograd's (log_softmax backward): a softmax of 10 logits is an exp each and a sum of 10,
# within ~10 x U32 = 6e-7 of its value (<= 1): atol 1e-6; rtol 1e-5 for the small entries'
# relative rounding (exp's). The loss: the same log-sum-exp over 10 terms, 1e-6 relative.
@pytest.mark.numerics
def test_logit_gradient_is_softmax_minus_onehot_per_image():
    torch.manual_seed(0)
    model = cifar_resnet(20, "bn")
    x, y = torch.randn(12, 3, 32, 32), torch.randint(0, 10, (12,))
    g = logit_gradients(model, x, y)
    expected = torch.softmax(g.logits.double(), 1) - F.one_hot(y, 10).double()
    torch.testing.assert_close(g.gradients.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.gradients.sum(1), torch.zeros(12), atol=1e-6, rtol=0)
    assert g.loss == pytest.approx(F.cross_entropy(g.logits, y).item(), rel=1e-6)

    # The public reproduction's way: retain_grad on the output of a full forward/backward
    # of the mean-reduced loss. Ours is that times the batch size (the per-image scale).
    model.train()
    out = model(x)
    out.retain_grad()
    F.cross_entropy(out, y).backward()
    torch.testing.assert_close(g.gradients, out.grad * len(y), rtol=1e-5, atol=1e-6)


def test_epoch_is_the_concatenation_of_its_batches_and_leaves_the_model_unchanged():
    torch.manual_seed(0)
    model = cifar_resnet(20, "bn")
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(3)]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    epoch = epoch_logit_gradients(model, batches)
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())  # running stats untouched
    one_by_one = [logit_gradients(model, x, y) for x, y in batches]
    torch.testing.assert_close(epoch.gradients, torch.cat([g.gradients for g in one_by_one]))
    torch.testing.assert_close(epoch.labels, torch.cat([y for _, y in batches]))
    assert epoch.loss == pytest.approx(np.mean([g.loss for g in one_by_one]), rel=1e-6)
    means, counts = epoch.mean_by_label(12)  # two classes more than the logits: empty rows
    labels = epoch.labels.numpy()
    assert counts.tolist() == np.bincount(labels, minlength=12).tolist()
    for k in range(12):
        rows = epoch.gradients[torch.from_numpy(labels == k)].double()
        expected = rows.mean(0) if len(rows) else torch.zeros(10, dtype=torch.float64)
        torch.testing.assert_close(means[k], expected)
    with pytest.raises(ValueError, match="no batches"):
        epoch_logit_gradients(model, [])


def _gradients(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    g = probabilities.copy()
    g[np.arange(len(labels)), labels] -= 1
    return g


def test_dominant_class_tells_a_uniform_prediction_from_a_collapsed_one():
    labels = np.arange(20) % 10
    # Uniform: every non-true entry is positive (0.1), yet no class is predicted.
    uniform = dominant_class(_gradients(np.full((20, 10), 0.1), labels), labels)
    assert uniform.share == 0.0 and uniform.mean_probability == pytest.approx(0.1)
    # Collapsed: class 3 takes 0.95 of every image.
    p = np.full((20, 10), 0.05 / 9)
    p[:, 3] = 0.95
    collapsed = dominant_class(_gradients(p, labels), labels)
    assert collapsed.cls == 3 and collapsed.share == 1.0 and collapsed.mean_probability == pytest.approx(0.95)
    assert collapsed.top1_share == 1.0 and collapsed.n_predicted == 1 and collapsed.n_images == 20
    # Half the images lean (p = 0.6) to class 7, the other half are uniform.
    p = np.full((20, 10), 0.1)
    p[:10] = 0.4 / 9
    p[:10, 7] = 0.6
    half = dominant_class(_gradients(p, labels), labels)
    assert half.cls == 7 and half.share == pytest.approx(9 / 18)  # images labelled 7 do not count
    # Argmax alone would call a barely tilted prediction "one class for every input".
    p = np.full((20, 10), 0.099)
    p[:, 2] = 0.109
    tilted = dominant_class(_gradients(p, labels), labels)
    assert tilted.top1_share == 1.0 and tilted.share == 0.0


def test_without_bn_a_deep_resnet_predicts_one_class_for_every_input():
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    none = logit_gradients(cifar_resnet(44, "none"), x, y)
    d = dominant_class(none.gradients, none.labels)
    assert d.share == 1.0 and d.mean_probability > 0.999  # saturated softmax: logits explode
    torch.manual_seed(0)
    nf = logit_gradients(cifar_resnet(44, "nf", skip_gain_init=1.0), x, y)
    assert dominant_class(nf.gradients, nf.labels).share == 0.0


def test_float64_logits_keep_their_precision():
    torch.manual_seed(0)
    model = cifar_resnet(8, "none").double()
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    g = logit_gradients(model, x, y)
    assert g.gradients.dtype == torch.float64
    expected = torch.softmax(g.logits, 1) - F.one_hot(y, 10).double()
    torch.testing.assert_close(g.gradients, expected, rtol=1e-12, atol=1e-14)
