"""Device models: the PCM model against docs/devices.md, one chip per trial over time, stuck
devices, measured bits, a user's own device."""

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import robustweights as rw
from robustweights import UserError, bits, registry, transform
from robustweights.conductances import matrix, to_pair
from robustweights.devices import T0, T_READ, pcm_nu, pcm_prog
from robustweights.grid import cell_seed, cells, parse_grid

DOCS = Path(__file__).resolve().parent.parent / "docs" / "devices.md"
N = 1_000_000  # draws in the statistical tests: a standard error is about 1e-3 of a std


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def pcm(spec, w, seed=0):
    return transform("pcm:" + spec)(w, gen(seed))


def levels(x, n=N):
    """A tensor of ``n`` weights: one at 1 (so each tile's scale is 1), the others at ``x``."""
    w = torch.full((n,), x)
    w[0] = 1.0
    return w


def within(values, mean, std, k=4):
    """Sample mean and std of ``values`` within ``k`` standard errors of ``mean`` and ``std``."""
    v = values.double()
    n = v.numel()
    assert abs(v.mean().item() - mean) < k * std / math.sqrt(n)
    assert abs(v.std().item() - std) < k * std / math.sqrt(2 * n)


# ---------------------------------------------------------------------------
# the mapping, exactly
# ---------------------------------------------------------------------------


def test_the_mapping_is_a_differential_pair_per_tile_and_reads_back():
    torch.manual_seed(0)
    w = torch.randn(600, 3, 10, 10) * 0.1  # a convolution: the matrix (600, 300), 2x1 tiles
    p = to_pair(w, g_max=25.0, tile=512)
    m = matrix(w)
    assert p.plus.shape == m.shape == (600, 300)
    for rows in (slice(0, 512), slice(512, 600)):
        s = 25.0 / m[rows].abs().max()
        assert torch.equal(p.scale[rows], torch.full_like(m[rows], s.item()))
        assert torch.equal(p.plus[rows], (s * m[rows]).clamp(0, 25.0))
        assert torch.equal(p.minus[rows], (-s * m[rows]).clamp(0, 25.0))
        assert max(p.plus[rows].max(), p.minus[rows].max()) == 25.0
    assert torch.allclose(p.weights(), w, rtol=1e-6, atol=1e-9)
    assert torch.equal(to_pair(w, tile=0).scale, torch.full_like(m, 25.0 / m.abs().max().item()))
    zero = torch.zeros(4, 8)  # a tile of zeros has no scale and reads as 0
    assert torch.equal(pcm("t=3600", zero), zero) and torch.equal(pcm("t=1", w[:0]), w[:0])


def test_without_noise_pcm_reads_the_weights():
    w = torch.randn(64, 100)
    assert torch.allclose(pcm("prog=0,drift=0,read=0", w), w, rtol=1e-6, atol=1e-7)
    assert not transform("pcm:prog=0,drift=0,read=0").random and transform("pcm").random


# ---------------------------------------------------------------------------
# programming, drift and read noise against devices.md
# ---------------------------------------------------------------------------


def test_programming_noise_is_the_polynomial_exactly_and_in_distribution():
    assert pcm_prog(torch.tensor([0.0, 0.5, 1.0])).tolist() == pytest.approx(
        [0.26348 / 25, (0.26348 + 1.9650 / 2 - 1.1731 / 4) / 25, (0.26348 + 1.9650 - 1.1731) / 25]
    )
    w = levels(0.5)
    out = pcm("drift=0,read=0,compensation=none,tile=0", w)
    # the draws, in read_chip's order: the programming noise of g+, then of g-
    g = gen()
    n_plus, n_minus = torch.randn(1, N, generator=g), torch.randn(1, N, generator=g)
    x = matrix(w)
    plus = (x + pcm_prog(x) * n_plus).clamp(min=0)
    minus = (pcm_prog(torch.zeros_like(x)) * n_minus).clamp(min=0)
    assert torch.allclose(out, (plus - minus).flatten(), rtol=1e-6, atol=1e-7)
    # in distribution: g+ ~ N(12.5, sigma(0.5)) uS (never clipped: 13 standard deviations), g- a
    # normal of sigma(0) clipped at 0: mean sigma / sqrt(2 pi), mean square sigma^2 / 2
    s_half, s0 = 0.26348 + 1.9650 / 2 - 1.1731 / 4, 0.26348
    mean = (12.5 - s0 / math.sqrt(2 * math.pi)) / 25
    std = math.sqrt(s_half**2 + s0**2 * (0.5 - 1 / (2 * math.pi))) / 25
    within(out[1:], mean, std)


def folded(mu, sigma):
    """Mean and std of ``|mu + sigma n|``."""
    m = sigma * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * sigma**2)) + mu * math.erf(
        mu / (sigma * math.sqrt(2))
    )
    return m, math.sqrt(mu**2 + sigma**2 - m**2)


def test_drift_is_the_power_law_of_a_per_device_exponent():
    assert pcm_nu(torch.tensor([1.0, 1e-9]), torch.zeros(2)).tolist() == pytest.approx([0.049, 0.1])
    w = levels(0.1)
    g = gen()
    for _ in range(2):  # programming noise of g+ and g-, then the drift draw of g+
        torch.randn(1, N, generator=g)
    n = torch.randn(1, N, generator=g).flatten()
    for t in (1.0, 3600.0, 3.15e7):
        out = pcm(f"t={t},prog=0,read=0,compensation=none,tile=0", w)
        factor = ((t + T0) / T0) ** -pcm_nu(torch.tensor([1.0] + [0.1] * (N - 1)), n)
        assert torch.allclose(out, w * factor, rtol=2e-6, atol=0)  # from g_prog, not cumulative
    nu = -torch.log(out[1:].double() / 0.1) / math.log((3.15e7 + T0) / T0)
    lx = math.log(0.1)
    within(nu, *folded(-0.0155 * lx + 0.0244, -0.0125 * lx - 0.0059))


def test_read_noise_is_one_over_f_relative_to_the_conductance():
    w = levels(0.5)
    for t in (1.0, 86400.0):
        out = pcm(f"t={t},prog=0,drift=0,compensation=none,tile=0", w)
        q = 0.0088 / 0.5**0.65
        within(out[1:] / 0.5 - 1, 0.0, q * math.sqrt(math.log((t + T0 + T_READ) / (2 * T_READ))))


def test_the_reference_numbers_of_the_design_without_compensation():
    w = torch.randn(256, 256, generator=gen(100))  # a seed no chip below uses
    for t, ratio in ((1, 0.98), (3600, 0.75), (86400, 0.64), (3.15e7, 0.48)):
        got = [
            (pcm(f"t={t},compensation=none", w, s).abs().mean() / w.abs().mean()) for s in (0, 1)
        ]
        assert all(abs(r.item() - ratio) < 0.01 for r in got), (t, got)


def test_global_compensation_rescales_each_tile_to_its_programmed_mean():
    w = torch.randn(8, 700, generator=gen(2))  # tiles of 512 and 188 columns
    for t in (3600, 3.15e7):
        on, off = pcm(f"t={t}", w), pcm(f"t={t},compensation=none", w)
        programmed = pcm(f"t={t},drift=0,read=0,compensation=none", w)
        for cols in (slice(0, 512), slice(512, 700)):
            alpha = on[:, cols] / off[:, cols]
            ok = off[:, cols] != 0
            assert torch.allclose(alpha[ok], alpha[ok][0].expand(int(ok.sum())), rtol=1e-5)
            assert on[:, cols].abs().mean().item() == pytest.approx(
                programmed[:, cols].abs().mean().item(), rel=1e-5
            )
        assert off.abs().mean() < 0.9 * on.abs().mean()  # drift shrinks, compensation undoes it


# ---------------------------------------------------------------------------
# one chip per trial: the time axis
# ---------------------------------------------------------------------------


def test_cell_seeds_of_existing_grids_are_unchanged():
    # computed before the time axis existed
    pinned = {
        ("add-gauss:sigma=0.0", 0): 2825016957111576355,
        ("add-gauss:sigma=0.5", 1): 3197641061957232130,
        ("sign:scale=max", 0): 1213615466580015792,
        ("stoch-mult:gamma=0.5,flip=false,scale=max", 1): 3227287804353312177,
        ("quant:bits=2,scale=max", 0): 3265661572045824277,
        ("add-gauss:sigma=1.0,scale=max", 0): 4021822181653163586,
        ("bitflip:p=0.01", 1): 2832656701956519780,
    }
    grids = ["add-gauss:sigma=0,0.5", "sign", "stoch-mult:gamma=0.5", "quant:bits=1..2"]
    grids += ["add-gauss:sigma=1,scale=max", "bitflip:p=0.01"]
    got = {c.key(): cell_seed(7, c) for c in cells(grids, 2)}
    assert {k: got[k] for k in pinned} == pinned


def test_a_trial_is_one_chip_at_every_time_and_compensation():
    grid = ["pcm:t=1,3600,3.15e7", "pcm:t=1,3600,3.15e7,compensation=none", "pcm:t=1,prog=0.5"]
    cs = cells(grid, 3)
    seeds = {}
    for c in cs:
        seeds.setdefault((c.t.params["prog"], c.trial), set()).add(cell_seed(0, c))
    assert all(len(s) == 1 for s in seeds.values())  # t and compensation: not in the seed
    assert len({next(iter(s)) for s in seeds.values()}) == 6  # trials and devices: in it
    assert {c.param for c in cs[:9]} == {"t"} and [c.value for c in cs[:9:3]] == [1, 3600, 3.15e7]
    with pytest.raises(UserError, match="one grid per value"):
        parse_grid("pcm:t=1,compensation=global,none")


def test_two_times_share_the_programming_and_draw_their_own_read_noise():
    w = torch.randn(128, 128, generator=gen(3))
    quiet = [pcm(f"t={t},drift=0,read=0", w, seed=5) for t in (1, 3.15e7)]
    assert torch.equal(quiet[0], quiet[1])  # the same programming noise, exactly
    a, b = (pcm(f"t={t},prog=0,drift=0,compensation=none", w, seed=5) for t in (1, 86400))
    ea, eb = (a - w).flatten(), (b - w).flatten()
    assert not torch.equal(a, b)
    assert abs(torch.corrcoef(torch.stack([ea, eb]))[0, 1]) < 0.03  # independent reads
    assert torch.equal(a, pcm("t=1,prog=0,drift=0,compensation=none", w, seed=5))
    assert not torch.equal(pcm("t=1", w, seed=5), pcm("t=1", w, seed=6))  # trials differ
    drifted = [pcm(f"t={t},prog=0,read=0,compensation=none", w.abs(), seed=5) for t in (60, 1e6)]
    nu = [-(d / w.abs()).log() / math.log((t + T0) / T0) for d, t in zip(drifted, (60, 1e6))]
    assert torch.allclose(nu[0], nu[1], rtol=1e-3, atol=1e-5)  # each device its own exponent


class Mixed(nn.Module):
    """A convolution, an embedding, attention and a linear layer: the weights a chip holds."""

    def __init__(self):
        super().__init__()
        self.conv, self.embed = nn.Conv2d(1, 4, 3), nn.Embedding(50, 16)
        self.attn, self.fc = nn.MultiheadAttention(16, 2), nn.Linear(16, 3)

    def forward(self, tokens):
        e = self.embed(tokens)
        a, _ = self.attn(e, e, e)
        return self.fc(a.mean(0)) + self.conv(e.unsqueeze(1)).mean()


def test_a_pcm_sweep_over_time_on_any_weight():
    torch.manual_seed(0)
    model = Mixed()
    tokens = torch.randint(0, 50, (6, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = {"conv.weight", "embed.weight", "attn.in_proj_weight", "fc.weight"}
    seen = {}

    def evaluate(m):
        m(tokens)
        for s in rw.sites(m):
            if s.pinned is not None:
                seen.setdefault(s.name, []).append(s.pinned.clone())
        return {"error": 0.0}

    rows = rw.sweep(model, None, ["pcm:t=1,3.15e7"], evaluate=evaluate, trials=2)
    assert [(r["value"], r["trial"]) for r in rows] == [(1, 0), (1, 1), (3.15e7, 0), (3.15e7, 1)]
    assert rows[0]["seed"] == rows[2]["seed"] != rows[1]["seed"] == rows[3]["seed"]
    assert names <= set(seen)
    for name in names:
        w, reads = before[name], seen[name]
        assert all(not torch.equal(r, w) for r in reads) and not torch.equal(reads[0], reads[2])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_device_models_keep_the_weights_dtype_and_shape(dtype):
    for spec in ("pcm:t=3600", "stuck:p_on=0.1,p_off=0.1"):
        for shape in ((16, 1, 5, 5), (48, 16), (10,), ()):
            w = torch.randn(shape, dtype=dtype)
            out = transform(spec)(w, gen())
            assert out.dtype == dtype and out.shape == w.shape and torch.isfinite(out).all()
            assert torch.equal(out, transform(spec)(w, gen()))


# ---------------------------------------------------------------------------
# stuck devices and bit errors
# ---------------------------------------------------------------------------


def test_stuck_devices_at_their_rates():
    out = transform("stuck:p_on=0.1,p_off=0.2,tile=0")(levels(0.5), gen())[1:]
    # (g+, g-) of a weight 0.5: g+ held 0.7 / on 0.1 / off 0.2, g- on 0.1 (else it stays 0)
    for value, p in ((0.5, 0.63), (1.0, 0.09), (0.0, 0.19), (-0.5, 0.07), (-1.0, 0.02)):
        share = (out == value).double().mean().item()
        assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / out.numel()), value
    with pytest.raises(UserError, match="at most 1"):
        transform("stuck:p_on=0.6,p_off=0.6")(torch.ones(3), gen())


def test_bit_errors_of_binary_weights_are_bitflip():
    w = transform("sign:scale=1")(torch.randn(N, generator=gen(4)))
    out = transform("bitflip:p=0.001")(w, gen())
    assert set(out.unique().tolist()) == {-1.0, 1.0}
    share = (out != w).double().mean().item()
    assert abs(share - 0.001) < 4 * math.sqrt(0.001 / N)


# ---------------------------------------------------------------------------
# measured bits
# ---------------------------------------------------------------------------


def test_snr_bits_is_the_capacity_of_the_measured_error():
    w = torch.randn(1000, generator=gen(5), dtype=torch.float64)
    signs = torch.where(torch.arange(1000) % 2 == 0, 1.0, -1.0)
    exact = bits.snr_bits([w], [w + 0.25 * signs])
    signal = float((w.double() ** 2).mean())
    assert exact == pytest.approx(rw.transforms.capacity(signal, 0.25), rel=1e-12)
    assert bits.snr_bits([w], [w.clone()]) is None and bits.snr_bits([], []) is None


def test_snr_bits_agrees_with_the_add_gauss_figure():
    ws = [torch.randn(1000, 1000, generator=gen(6)), torch.randn(500, generator=gen(7)) * 3]
    for spec in ("add-gauss:sigma=0.8", "add-gauss:sigma=0.3,scale=max"):
        t = transform(spec)
        g = gen(8)
        read = [t(w, g) for w in ws]
        assert bits.snr_bits(ws, read) == pytest.approx(
            bits.measured_bits(t, ws, [None, None]), abs=0.02
        )
    read = [transform("mult-gauss:sigma=0.5")(ws[0], gen(9))]
    assert bits.snr_bits(ws[:1], read) == pytest.approx(
        bits.capacity_bits("mult-gauss:sigma=0.5"), abs=2e-3
    )
    w = ws[0]
    assert bits.snr_bits([w], [pcm("t=3.15e7,compensation=none", w)]) < bits.snr_bits(
        [w], [pcm("t=3.15e7", w)]
    )


# ---------------------------------------------------------------------------
# a user's own device: the worked example of docs/devices.md
# ---------------------------------------------------------------------------


def test_the_user_defined_device_of_the_docs(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # others see built-ins
    code = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    example = next(c for c in code if "register_device" in c)
    assert len(example.strip().splitlines()) <= 25
    scope = {}
    exec(example, scope)
    assert "rram" in rw.list_transforms()
    w, w_day = scope["w"], scope["w_day"]
    # a rate of about 0.01 per device: the weights shrink by about 1 - 0.01 ln(1 + 86400)
    ratio = (w_day.abs().mean() / w.abs().mean()).item()
    assert ratio == pytest.approx(1 - 0.01 * math.log1p(86400), abs=0.02)
    assert (
        transform("rram:t=1").spec
        == "rram:t=1.0,compensation=global,tile=512,prog=1.0,drift=1.0,read=1.0"
    )
    seeds = {cell_seed(0, c) for c in cells(["rram:t=1,3600,86400"], 1)}
    assert len(seeds) == 1
