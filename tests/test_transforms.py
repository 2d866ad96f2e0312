"""The identities that define each transform, and the spec parser's contract."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import robustweights as rw
from robustweights import UserError, list_transforms, projected, transform

floats = st.floats(
    -3, 3, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=32
)  # (a subnormal
# weight times a factor below 1 underflows to 0: float arithmetic, not the transform)
weights = st.lists(floats, min_size=1, max_size=64).map(
    lambda v: torch.tensor(v, dtype=torch.float32)
)
scales = st.sampled_from(["max", "mean", "clip", "0.5", "2"])


def same(a, b):
    return torch.equal(a, b)


@given(weights, scales)
def test_power_zero_is_sign_and_one_is_identity(w, scale):
    assert same(transform(f"power:beta=0,scale={scale}")(w), transform(f"sign:scale={scale}")(w))
    assert same(transform(f"power:beta=1,scale={scale}")(w), w)


@given(weights, scales)
def test_quant_one_bit_is_sign(w, scale):
    assert same(transform(f"quant:bits=1,scale={scale}")(w), transform(f"sign:scale={scale}")(w))


@given(weights, st.integers(1, 8))
def test_quant_takes_at_most_2_to_the_k_values_inside_the_range(w, k):
    q = transform(f"quant:bits={k}")(w)
    assert q.unique().numel() <= 2**k
    H = w.abs().max().item() or 1.0
    assert q.abs().max().item() <= H * (1 + 1e-6)


def test_quant_levels_are_uniform_and_rounding_is_nearest():
    w = torch.linspace(-1, 1, 10001)
    q = transform("quant:bits=3,scale=clip")(w)
    levels = q.unique()
    assert torch.allclose(levels, torch.linspace(-1, 1, 8))
    assert (q - w).abs().max() <= 1 / 7 + 1e-6  # half a step


@given(weights)
def test_sign_is_plus_minus_H_and_sign_of_zero_is_plus(w):
    s = transform("sign:scale=clip")(w)
    assert set(s.unique().tolist()) <= {-1.0, 1.0}
    assert same(s, torch.where(w >= 0, 1.0, -1.0))
    assert transform("sign")(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]


def test_stoch_sign_is_unbiased():
    w = torch.linspace(-1.5, 1.5, 61)
    g = torch.Generator().manual_seed(0)
    t = transform("stoch-sign:scale=clip")
    mean = torch.stack([t(w, g) for _ in range(4000)]).mean(0)
    # 4000 draws of +-1: standard error <= 1/sqrt(4000) ~ 0.016
    assert (mean - w.clamp(-1, 1)).abs().max() < 0.07
    assert set(t(w, g).unique().tolist()) <= {-1.0, 1.0}


@given(weights, st.floats(0.05, 1.0))
def test_stoch_mult_stays_within_gamma_and_its_inverse(w, gamma):
    out = transform(f"stoch-mult:gamma={gamma}")(w, torch.Generator().manual_seed(1))
    ratio_ok = (out.abs() >= w.abs() * gamma * (1 - 1e-5)) & (
        out.abs() <= w.abs() / gamma * (1 + 1e-5)
    )
    assert bool(ratio_ok.all())
    assert same(torch.sign(out), torch.sign(w))


def test_stoch_mult_flip_draws_signs_like_stoch_sign():
    w = torch.full((20000,), 0.5)
    out = transform("stoch-mult:gamma=0.5,flip=true,scale=clip")(
        w, torch.Generator().manual_seed(2)
    )
    assert abs((out > 0).float().mean().item() - 0.75) < 0.02  # q = (0.5 + 1) / 2
    assert bool(((out.abs() >= 0.25 - 1e-6) & (out.abs() <= 1.0 + 1e-6)).all())


@pytest.mark.parametrize(
    "spec",
    [
        s
        for s in [
            "stoch-sign",
            "stoch-mult:gamma=0.5",
            "stoch-mult:gamma=0.3,flip=true",
            "add-gauss:sigma=0.5",
            "mult-gauss:sigma=0.2",
            "bitflip:p=0.1",
        ]
    ],
)
def test_same_generator_seed_same_output_and_input_untouched(spec):
    t = transform(spec)
    assert t.random
    w = torch.randn(50, 7)
    before = w.clone()
    a = t(w, torch.Generator().manual_seed(5))
    b = t(w, torch.Generator().manual_seed(5))
    c = t(w, torch.Generator().manual_seed(6))
    assert same(a, b) and not same(a, c)
    assert same(w, before)


def test_random_transforms_draw_only_from_the_generator_passed():
    w = torch.randn(100)
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    a = transform("add-gauss:sigma=1")(w, g)
    torch.manual_seed(123)  # the global RNG must not matter
    b = transform("add-gauss:sigma=1")(w, torch.Generator().manual_seed(3))
    assert same(a, b)


@given(weights)
def test_deterministic_transforms_never_change_their_input(w):
    before = w.clone()
    for spec in [
        "identity",
        "sign",
        "ternary:delta=0.3",
        "quant:bits=4",
        "power:beta=0.5",
        "clip",
        "prune:frac=0.5",
    ]:
        transform(spec)(w)
    assert same(w, before)


def test_add_gauss_noise_has_the_asked_spread():
    w = torch.randn(200000) * 3
    out = transform("add-gauss:sigma=0.8")(w, torch.Generator().manual_seed(0))
    assert abs((out - w).std().item() / w.std().item() - 0.8) < 0.01
    assert same(transform("add-gauss:sigma=0")(w, None), w)


def test_ternary_prune_bitflip_clip():
    w = torch.tensor([-1.0, -0.2, 0.0, 0.3, 0.9])
    assert transform("ternary:delta=0.25,scale=clip")(w).tolist() == [-1.0, 0.0, 0.0, 1.0, 1.0]
    assert torch.equal(
        transform("prune:frac=0.4")(w), torch.tensor([-1.0, 0.0, 0.0, 0.3, 0.9])
    )  # the 2 smallest
    assert same(transform("bitflip:p=1")(w, None), -w)
    assert same(transform("bitflip:p=0")(w, None), w)
    assert torch.equal(transform("clip:scale=0.5")(w), torch.tensor([-0.5, -0.2, 0.0, 0.3, 0.5]))


def test_power_between_bends_magnitudes_toward_H():
    w = torch.tensor([0.25, -0.04, 1.0])
    assert torch.allclose(transform("power:beta=0.5,scale=clip")(w), torch.tensor([0.5, -0.2, 1.0]))


def test_spec_round_trips_and_scale_defaults():
    t = transform("stoch-mult:gamma=0.5,flip=true")
    assert t.spec == "stoch-mult:gamma=0.5,flip=true,scale=max"
    assert transform(t.spec) == t
    assert t.with_defaults(scale="clip").params["scale"] == "clip"
    assert transform("sign:scale=mean").with_defaults(scale="clip").params["scale"] == "mean"


@pytest.mark.parametrize(
    "spec, words",
    [
        ("nope", "choose one of"),
        ("gauss:sigma=1", "add-gauss"),
        ("power", "missing parameter 'beta'"),
        ("power:b=1", "unknown parameter"),
        ("stoch-mult:gamma=2", "0 < gamma <= 1"),
        ("stoch-mult:gamma=0", "0 < gamma <= 1"),
        ("quant:bits=0", "1 <= bits <= 16"),
        ("quant:bits=2.5", "not valid"),
        ("add-gauss:sigma=-1", "sigma >= 0"),
        ("add-gauss:sigma=nan", "sigma >= 0"),
        ("sign:scale=huge", "max, clip, mean"),
        ("sign:scale=-1", "max, clip, mean"),
        ("stoch-mult:gamma=0.5,flip=maybe", "true or false"),
        ("add-gauss:sigma=0,0.5", "sweeps"),
        ("power:beta=1,beta=2", "twice"),
        ("", "choose one of"),
    ],
)
def test_bad_specs_raise_value_error_naming_the_choices(spec, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")) as e:
        transform(spec)
    assert isinstance(e.value, UserError)
    assert "\n" not in str(e.value)


def test_registry_holds_every_transform_of_the_method():
    names = set(list_transforms())
    assert {
        "identity",
        "sign",
        "stoch-sign",
        "ternary",
        "quant",
        "power",
        "stoch-mult",
        "add-gauss",
        "mult-gauss",
        "clip",
        "prune",
        "bitflip",
    } <= names


@settings(max_examples=30)
@given(st.floats(0.01, 0.99))
def test_power_is_monotone_and_keeps_signs(beta):
    w = torch.linspace(-1, 1, 101)
    p = transform(f"power:beta={beta},scale=clip")(w)
    assert bool((p[1:] >= p[:-1]).all())
    assert math.isclose(p[-1].item(), 1.0) and math.isclose(p[0].item(), -1.0)


def test_attach_takes_generators_that_refuse_weak_references():
    """CUDA generators refuse weak references in several torch releases; attaching one crashed
    training (a weak-value registry of generators). Draws need no registry now: attach keeps the
    generator as given."""
    import weakref

    class NoWeakRefs:  # a generator stand-in: a device, no __weakref__ slot
        __slots__ = ("device",)

        def __init__(self):
            self.device = torch.device("cpu")

    g = NoWeakRefs()
    with pytest.raises(TypeError):
        weakref.ref(g)
    m = torch.nn.Linear(3, 2)
    rw.attach(m, "stoch-sign", generator=g)
    assert projected.sites(m)[0].generator is g


@pytest.mark.parametrize(
    "scale, reference",
    [
        ("std", lambda w, H: w.std(correction=0)),
        ("max", lambda w, H: w.abs().max()),
        ("clip", lambda w, H: H),
        ("mean", lambda w, H: w.abs().mean()),
        ("0.3", lambda w, H: 0.3),
    ],
)
def test_add_gauss_reference_is_exact_against_the_hand_formula(scale, reference):
    w = torch.randn(50, 20) * 0.1 + 0.02
    t = transform(f"add-gauss:sigma=0.7,scale={scale}")
    n = torch.randn(w.shape, generator=torch.Generator().manual_seed(4))
    assert torch.equal(
        t(w, torch.Generator().manual_seed(4), clip=0.5), w + (0.7 * reference(w, 0.5)) * n
    )
    assert t.spec == (
        "add-gauss:sigma=0.7" if scale == "std" else f"add-gauss:sigma=0.7,scale={scale}"
    )
    assert (
        t.with_defaults(scale="clip").spec == t.spec
    )  # a sweep's magnitude default never moves the noise


def test_add_gauss_clip_reference_on_a_never_clipped_tensor_is_its_range():
    w = torch.randn(100)
    n = torch.randn(100, generator=torch.Generator().manual_seed(0))
    out = transform("add-gauss:sigma=1,scale=clip")(w, torch.Generator().manual_seed(0), clip=None)
    assert torch.equal(out, w + w.abs().max() * n)
    with pytest.raises(UserError, match="out of range"):
        transform("sign:scale=std")


def test_measured_bits_against_a_hand_computation():
    from robustweights.bits import capacity_bits, measured_bits

    a = torch.randn(300) * 0.2 + 0.1  # not zero-mean
    b = torch.rand(100) * 2 - 1  # fills [-1, 1]
    for scale, ref in (("std", lambda w: w.std(correction=0)), ("max", lambda w: w.abs().max())):
        t = f"add-gauss:sigma=0.8,scale={scale}"
        hand = (
            sum(
                0.5 * math.log2(1 + float(w.square().mean()) / float(0.8 * ref(w)) ** 2) * w.numel()
                for w in (a, b)
            )
            / 400
        )
        assert measured_bits(t, [a, b], [1.0, 1.0]) == pytest.approx(hand, rel=1e-6)
    # with scale=std on zero-mean weights the measured figure is the nominal one: 0.68 bits at
    # sigma 0.8
    z = torch.randn(1000)
    z -= z.mean()
    assert measured_bits("add-gauss:sigma=0.8", [z], [None]) == pytest.approx(
        capacity_bits("add-gauss:sigma=0.8")
    )
    assert capacity_bits("add-gauss:sigma=0.8") == pytest.approx(0.678, abs=1e-3)
    # range-relative noise on weights that do not fill their range carries fewer bits than its
    # nominal figure
    assert measured_bits("add-gauss:sigma=0.8,scale=max", [a], [None]) < 0.5 * capacity_bits(
        "add-gauss:sigma=0.8"
    )
    assert (
        measured_bits("quant:bits=3", [a], [None]) == 3.0
        and measured_bits("add-gauss:sigma=0", [a], [1]) is None
    )
    # a tiny sigma is a huge but finite figure (before: ZeroDivisionError at 1e-170; 'Infinity'
    # written into results.json at 1e-160, which the report then refused)
    for sigma in (1e-160, 1e-170, 1e-300):
        nominal = capacity_bits(f"mult-gauss:sigma={sigma}")
        assert (
            nominal == pytest.approx(-math.log2(sigma))
            and capacity_bits(f"add-gauss:sigma={sigma}") == nominal
        )
        assert math.isfinite(measured_bits(f"add-gauss:sigma={sigma}", [z], [None]))


def test_a_user_adds_a_distortion_and_everything_knows_it(monkeypatch):
    """register_transform: the docs' stuck-at-zero example, swept, with its metadata used by bits
    and reports."""
    import robustweights as rw
    from torch import nn
    from robustweights import registry
    from robustweights.transforms import Param, uniform

    # other tests see the built-ins only
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @rw.register_transform(
        "stuck-zero",
        Param(
            "p",
            "float",
            ok=lambda p: 0 <= p <= 1,
            allowed="0 <= p <= 1",
            label="p (fraction stuck at 0)",
        ),
        random=True,
        constant=lambda q: q["p"] in (0, 1),
    )
    def stuck_zero(w, g, H, p):
        """Each weight reads 0 with probability p (a memory cell stuck at zero)."""
        return w * (uniform(w, g) >= p)

    assert "stuck-zero" in list_transforms()
    with pytest.raises(UserError, match="0 <= p <= 1"):
        transform("stuck-zero:p=2")
    w = torch.randn(1000)
    out = transform("stuck-zero:p=0.3")(w, torch.Generator().manual_seed(0))
    assert 0.25 < (out == 0).float().mean() < 0.35 and not transform("stuck-zero:p=0").random
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    loader = [(torch.randn(20, 12), torch.randint(0, 3, (20,)))]
    rows = rw.sweep(model, loader, ["stuck-zero:p=0,0.5,1"], trials=2)
    assert [(r["value"], r["trial"]) for r in rows] == [(0.0, 0), (0.5, 0), (0.5, 1), (1.0, 0)]
    assert all(r["effective_bits"] is None for r in rows)
    from robustweights.reports.figures import Key, param_label

    assert param_label(Key("stuck-zero", "p", "")) == "p (fraction stuck at 0)"
    assert param_label(Key("quant", "bits", "")) == "bits (2^bits levels)"
    with pytest.raises(UserError, match="needs letters"):
        rw.register_transform("bad:name")


def test_plus_minus_H_by_where_is_the_arithmetic_on_the_mask_bit_for_bit():
    """transforms._pm: off the CPU torch.where (one kernel), on it arithmetic on the mask; the same
    numbers for H a number (rounded to float32 either way) or a 0-dim tensor (scale=max), which
    sign, stoch-sign and stoch-mult's flip rest on."""
    from robustweights.transforms import _pm

    mask = torch.rand(1000) < 0.5
    for H in (1, 0.0589, 1 / 3, 7.25e-5, torch.tensor(0.123456789), torch.rand(5).amax()):
        by_where, by_arithmetic = (
            _pm(mask, H, torch.float32, where=True),
            _pm(mask, H, torch.float32, where=False),
        )
        assert by_where.dtype == by_arithmetic.dtype == torch.float32 and torch.equal(
            by_where, by_arithmetic
        )
    for dtype in (torch.float64, torch.bfloat16):  # not the default dtype: arithmetic in that dtype
        assert torch.equal(
            _pm(mask, 1 / 3, dtype, where=True), _pm(mask, 1 / 3, dtype, where=False)
        )
        assert _pm(mask, 1 / 3, dtype, where=True).dtype == dtype


def test_stoch_sign_is_the_textbook_rule_on_the_same_draws_bit_for_bit():
    """stoch-sign computes (u - 0.5) 2H < W (one op less than (2u - 1) H < W, the same rounding): +H
    exactly where BinaryConnect's rule u < clip((W/H + 1)/2, 0, 1) says, on the generator's own
    draws."""
    torch.manual_seed(0)
    w = torch.randn(200_000) * 0.05
    for H in (0.0589, 1 / 3, 1.0):
        u = torch.rand(w.shape, generator=torch.Generator().manual_seed(4))
        textbook = torch.where((2 * u - 1) * H < w, torch.tensor(H), torch.tensor(-H))
        got = transform(f"stoch-sign:scale={H}")(w, torch.Generator().manual_seed(4))
        assert torch.equal(got, textbook)


def test_prune_keeps_to_row_major_positions_whatever_the_strides():
    """prune wrote through out.view(-1), which a channels-last conv weight or a transposed parameter
    does not have (RuntimeError: view size is not compatible)."""
    w = torch.randn(8, 3, 3, 3)
    want = rw.transform("prune:frac=0.5")(w)
    cl = w.to(memory_format=torch.channels_last)
    assert torch.equal(rw.transform("prune:frac=0.5")(cl), want)
    t = torch.randn(784, 10).t()
    assert torch.equal(
        rw.transform("prune:frac=0.3")(t), rw.transform("prune:frac=0.3")(t.contiguous())
    )
    assert (rw.transform("prune:frac=0.3")(t) == 0).sum() == int(0.3 * t.numel())


def test_the_built_ins_are_registered_whichever_module_is_imported_first():
    """robustweights.registry imported alone (in a fresh interpreter) still knows every built-in,
    and robustweights.transforms re-exports the registry's own objects."""
    import subprocess
    import sys

    code = (
        "from robustweights.registry import list_transforms, transform\n"
        "print(','.join(list_transforms()), transform('quant:bits=4').spec)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    names, spec = out.stdout.split()
    assert (
        names.split(",") == list_transforms()
        and "sign" in names
        and spec == "quant:bits=4,scale=max"
    )
    from robustweights import registry, transforms

    for name in ("Param", "Entry", "Transform", "transform", "parse_spec", "register_transform"):
        assert getattr(transforms, name) is getattr(registry, name)
    for name in ("entry", "list_transforms", "magnitude", "SCALES"):
        assert getattr(transforms, name) is getattr(registry, name)
