"""Tests for robustweights.models: shapes, widths, layer order, the registry and its errors."""

import pytest
import torch
import torch.nn as nn

from robustweights import models
from robustweights.errors import UserError
from robustweights.models import create_model, list_models, register_model

# natural inputs: (name, in_shape, create_model kwargs)
NATURAL = [
    ("mlp", (1, 28, 28), {}),
    ("cnn", (1, 28, 28), {}),
    ("bc-vgg", (3, 32, 32), {"width": 0.125}),
    ("resnet18", (3, 32, 32), {"width": 0.125, "stem": "cifar"}),
    ("resnet18", (3, 64, 64), {"width": 0.125, "stem": "imagenet"}),
]


def weighted(model: nn.Module) -> list[nn.Module]:
    """Conv/linear layers in modules() order: what the weight projection sees."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def weight_count(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in weighted(model))


def bc_vgg_weights(width: float, c: int = 3, hw: int = 32, classes: int = 10) -> int:
    """BinaryConnect's net, conv/linear weights counted from the architecture by hand."""
    c1, c2, c3, f = (round(k * width) for k in (128, 256, 512, 1024))
    convs = 9 * (c * c1 + c1 * c1 + c1 * c2 + c2 * c2 + c2 * c3 + c3 * c3)
    return convs + c3 * (hw // 8) ** 2 * f + f * f + f * classes


def macs_per_image(model: nn.Module, in_shape) -> int:
    """Multiply-adds of the conv and linear layers for one image, counted with hooks."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            total += out[0].numel() * k
        else:
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in weighted(model)]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *in_shape))
    for h in handles:
        h.remove()
    return total


# -----------------------------------------------------------------------------
# the built-in models


@pytest.mark.parametrize("name,in_shape,kw", NATURAL)
def test_output_shape_and_layer_order(name, in_shape, kw):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_shape=in_shape, **kw)
    out = model(torch.randn(4, *in_shape))
    assert out.shape == (4, 7)
    assert torch.isfinite(out).all()
    layers = weighted(model)
    first, last = layers[0], layers[-1]
    if isinstance(first, nn.Conv2d):
        assert first.in_channels == in_shape[0]
    else:  # mlp: the input layer sees the flattened image
        assert first.in_features == in_shape[0] * in_shape[1] * in_shape[2]
    assert isinstance(last, nn.Linear) and last.out_features == 7


def test_list_models():
    assert {"mlp", "cnn", "bc-vgg", "resnet18"} <= set(list_models())
    assert list_models() == sorted(list_models())
    assert list_models("resnet*") == ["resnet18"]
    assert list_models("*-vgg") == ["bc-vgg"]
    assert list_models("nothing*") == []


def test_mlp_hidden_units_follow_width_exactly():
    # Linear weights: 784*h1 + h1*h2 + h2*10 with h = round(u * width)
    for width, hidden in [(1.0, (512, 512)), (0.3, (512, 512)), (2.0, (100, 30, 7))]:
        model = create_model("mlp", in_shape=(1, 28, 28), width=width, hidden=hidden)
        units = [784] + [round(u * width) for u in hidden] + [10]
        assert [m.out_features for m in weighted(model)] == units[1:]
        assert weight_count(model) == sum(a * b for a, b in zip(units, units[1:]))


def test_output_batch_norm_is_optional():
    for name in ("mlp", "cnn", "bc-vgg"):
        kw = {"width": 0.125, "in_shape": (3, 32, 32)}
        assert isinstance(list(create_model(name, **kw).modules())[-1], nn.BatchNorm1d)
        assert isinstance(list(create_model(name, out_bn=False, **kw).modules())[-1], nn.Linear)


def test_bc_vgg_weight_count_and_width_scaling():
    full = weight_count(create_model("bc-vgg", in_shape=(3, 32, 32)))
    assert 13_500_000 <= full <= 14_500_000
    assert full == bc_vgg_weights(1.0)
    half = weight_count(create_model("bc-vgg", in_shape=(3, 32, 32), width=0.5))
    assert half == bc_vgg_weights(0.5)
    assert 0.24 < half / full < 0.26  # nearly all weights are in width^2 layers


def test_cnn_is_cheap():
    macs = macs_per_image(create_model("cnn", in_shape=(1, 28, 28)), (1, 28, 28))
    assert macs == 28 * 28 * 32 * 9 + 14 * 14 * 64 * 32 * 9 + 64 * 7 * 7 * 256 + 256 * 10
    assert 3_000_000 < macs < 6_000_000


def test_resnet18_stems():
    def stem_kernel(hw, stem="auto"):
        model = create_model("resnet18", in_shape=(3, hw, hw), width=0.125, stem=stem)
        return weighted(model)[0].kernel_size

    assert stem_kernel(32) == (3, 3)
    assert stem_kernel(64) == (7, 7)
    assert stem_kernel(32, "imagenet") == (7, 7)
    assert stem_kernel(64, "cifar") == (3, 3)
    full = create_model("resnet18", num_classes=1000, in_shape=(3, 224, 224))
    assert sum(p.numel() for p in full.parameters()) == 11_689_512  # torchvision's resnet18


def test_convs_before_batch_norm_have_no_bias():
    for name, in_shape, kw in NATURAL:
        model = create_model(name, in_shape=in_shape, **kw)
        assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_same_seed_same_weights():
    def build():
        torch.manual_seed(123)
        return create_model("cnn", in_shape=(1, 28, 28)).state_dict()

    a, b = build(), build()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(124)
    c = create_model("cnn", in_shape=(1, 28, 28)).state_dict()
    assert not torch.equal(a["0.weight"], c["0.weight"])


# -----------------------------------------------------------------------------
# user factories, referenced as f"{__name__}:function"


class Recorder(nn.Module):
    """A model that remembers the keyword arguments its factory was given."""

    def __init__(self, received):
        super().__init__()
        self.received = received
        self.fc = nn.Linear(4, 2)


def my_factory(num_classes, in_shape, width=1.0, depth=2):
    return Recorder(dict(num_classes=num_classes, in_shape=in_shape, width=width, depth=depth))


def only_num_classes(num_classes):
    return Recorder(dict(num_classes=num_classes))


def takes_anything(**kwargs):
    return Recorder(kwargs)


class UserNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(3, num_classes)


def not_a_module(num_classes):
    return "not a model"


def test_user_factory_gets_what_it_accepts():
    model = create_model(f"{__name__}:my_factory", num_classes=5, in_shape=(1, 8, 8), depth=3)
    assert model.received == dict(num_classes=5, in_shape=(1, 8, 8), width=1.0, depth=3)
    model = create_model(f"{__name__}:only_num_classes", num_classes=3, width=0.5)
    assert model.received == {"num_classes": 3}
    model = create_model(f"{__name__}:takes_anything", num_classes=4, foo="bar")
    assert model.received == dict(num_classes=4, in_shape=(3, 32, 32), width=1.0, foo="bar")
    assert create_model(f"{__name__}:UserNet", num_classes=6).fc.out_features == 6


def test_none_arguments_are_dropped():
    model = create_model(f"{__name__}:my_factory", width=None, depth=None)
    assert model.received["width"] == 1.0 and model.received["depth"] == 2  # factory defaults
    model = create_model("mlp", in_shape=(1, 28, 28), hidden=None, out_bn=None)
    assert [m.out_features for m in weighted(model)] == [512, 512, 10]


def test_factory_module_from_sys_path(tmp_path, monkeypatch):
    (tmp_path / "my_nets_for_rw_test.py").write_text(
        "import torch.nn as nn\n"
        "def tiny(num_classes, in_shape):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2],"
        " num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("my_nets_for_rw_test:tiny", num_classes=3, in_shape=(2, 4, 4))
    assert model(torch.randn(5, 2, 4, 4)).shape == (5, 3)


def test_register_model_decorator(monkeypatch):
    monkeypatch.setattr(models, "_MODELS", dict(models._MODELS))  # leave the registry as found

    @register_model("test-only-model")
    def factory(num_classes=10):
        return UserNet(num_classes)

    assert "test-only-model" in list_models("test-only-*")
    assert create_model("test-only-model", num_classes=4).fc.out_features == 4
    with pytest.raises(UserError, match="already registered"):
        register_model("test-only-model")(not_a_module)
    with pytest.raises(UserError, match="a:b"):
        register_model("a:b")


# -----------------------------------------------------------------------------
# mistakes a user can make


@pytest.mark.parametrize(
    "name,kwargs,needle",
    [
        ("vgg-nope", {}, "vgg-nope"),
        ("mlp", {"width": 0}, "width 0"),
        ("mlp", {"width": -1}, "width -1"),
        ("cnn", {"width": 0.001}, "width 0.001"),
        ("bc-vgg", {"width": 0.001}, "width 0.001"),
        ("resnet18", {"width": float("nan")}, "width nan"),
        ("cnn", {"num_classes": 1}, "num_classes 1"),
        ("cnn", {"in_shape": (1, 30, 30)}, "(1, 30, 30)"),
        ("cnn", {"in_shape": (1, 4, 4)}, "(1, 4, 4)"),
        ("bc-vgg", {"in_shape": (3, 28, 28)}, "(3, 28, 28)"),
        ("mlp", {"in_shape": (28, 28)}, "(28, 28)"),
        ("mlp", {"hidden": (512, 0)}, "(512, 0)"),
        ("mlp", {"hidden": (512, 2), "width": 0.2}, "0 of 2 channels"),  # the smallest layer counts
        ("resnet18", {"stem": "tiny"}, "tiny"),
        ("cnn", {"stem": "cifar"}, "stem"),  # an option the model does not take
        ("no_such_module_rw:factory", {}, "no_such_module_rw"),
        (f"{__name__}:no_such_factory", {}, "no_such_factory"),
        (f"{__name__}:not_a_module", {}, "not_a_module"),
        (":factory", {}, ":factory"),
    ],
)
def test_user_errors(name, kwargs, needle):
    with pytest.raises(UserError) as info:
        create_model(name, **kwargs)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_unknown_name_lists_the_choices():
    with pytest.raises(UserError) as info:
        create_model("resnet-18")
    for name in ("mlp", "cnn", "bc-vgg", "resnet18", "package.module:function"):
        assert name in str(info.value)
