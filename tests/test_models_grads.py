import pytest
import torch
import torch.nn.functional as F

from gradguard.errors import ConfigError
from gradguard.grads import batch_gradient, flatten, flatten_batched, per_sample_gradients, unflatten
from gradguard.models import MODELS, build_model

SHAPES = [(1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradient_shapes(name, shape):
    opts = {"width": 8} if name == "convnet" else {}
    model = build_model(name, shape, 10, **opts)
    x, y = torch.rand(2, *shape), torch.tensor([1, 7])
    assert model(x).shape == (2, 10)
    grads = batch_gradient(model, x, y)
    assert [g.shape for g in grads] == [p.shape for p in model.parameters()]


@pytest.mark.parametrize("shape, features", [((1, 28, 28), 588), ((3, 32, 32), 768)])
def test_lenet_feature_count_matches_dlg(shape, features):
    model = build_model("lenet", shape, 10)
    assert model.fc.in_features == features


def test_dlg_init_is_uniform_half():
    model = build_model("lenet", (1, 28, 28), 10, dlg_init=True)
    values = torch.cat([p.flatten() for p in model.parameters()])
    assert values.min() >= -0.5 and values.max() <= 0.5 and values.std() > 0.25


def test_normalisation_is_the_first_layer():
    model = build_model("lenet", (1, 28, 28), 10, mean=(0.5,), std=(0.25,))
    x = torch.full((1, 1, 28, 28), 0.75)
    assert torch.allclose(model.normalize(x), torch.ones_like(x))


@pytest.mark.parametrize("call, message", [
    (lambda: build_model("vgg", (1, 28, 28), 10), "unknown name 'vgg'"),
    (lambda: build_model("lenet", (1, 8, 8), 10), "at least 16x16"),
    (lambda: build_model("lenet", (1, 28, 28), 10, depth=3), "bad option"),
    (lambda: build_model("convnet", (3, 20, 20), 10, width=4), "does not fit"),
])
def test_bad_model_requests(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def test_batch_gradient_equals_backward():
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10)
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 3, 3, 9])
    grads = batch_gradient(model, x, y)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-7)


@pytest.mark.parametrize("name", ["lenet", "convnet"])
def test_per_sample_gradients_equal_a_loop(name):
    torch.manual_seed(0)
    opts = {"width": 4} if name == "convnet" else {}
    model = build_model(name, (3, 32, 32), 10, **opts).eval()
    x, y = torch.rand(5, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4])
    per_sample = per_sample_gradients(model, x, y)
    for i in range(len(x)):
        single = batch_gradient(model, x[i:i + 1], y[i:i + 1])
        for ps, g in zip(per_sample, single):
            assert torch.allclose(ps[i], g, atol=1e-6)
    assert flatten_batched(per_sample).shape == (5, sum(p.numel() for p in model.parameters()))


def test_flatten_roundtrip():
    like = [torch.randn(3, 4), torch.randn(5)]
    back = unflatten(flatten(like), like)
    assert all(torch.equal(a, b) for a, b in zip(like, back))
    with pytest.raises(ValueError, match="18 elements, the shapes need 17"):
        unflatten(torch.zeros(18), like)


def test_per_sample_gradients_refuse_batchnorm_in_training_mode():
    model = build_model("convnet", (3, 32, 32), 10, width=4)
    with pytest.raises(ConfigError, match="BatchNorm"):
        per_sample_gradients(model, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
