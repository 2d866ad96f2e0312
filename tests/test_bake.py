"""Baking: the weights a network runs with, in the plain class; packed 1-bit files; run folders."""

import math

import pytest
import torch
from torch import nn

import robustweights as rw
from robustweights.bake import bake, bake_model, export_run, load_baked, packed_sizes, save_baked
from robustweights.models import create_model
from robustweights.projected import sites


class TiedLM(nn.Module):
    """A small language model whose output head is its embedding table (as GPT-2's)."""

    def __init__(self, vocab=37, dim=24):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, tokens):  # (B, T)
        h = self.norm(torch.relu(self.mix(self.emb(tokens))))  # (B, T, dim)
        return self.head(h)  # (B, T, vocab)


def cnn():
    return create_model("cnn", num_classes=10, in_shape=(1, 28, 28), width=0.25)


def trained(make, projection, inputs, steps=3, seed=0):
    """``make()`` attached with ``projection`` after a few SGD steps on ``inputs`` (batch-norm
    statistics move too), in eval mode."""
    torch.manual_seed(seed)
    model = make()
    rw.attach(model, projection, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        out = model(inputs)
        loss = out.float().pow(2).mean() - out[..., 0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rw.clip_(model)
    return model.eval()


def images():
    return torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def tokens():
    return torch.randint(0, 37, (4, 6), generator=torch.Generator().manual_seed(1))


CASES = {"cnn": (cnn, images), "tied": (TiedLM, tokens)}


def plain_with(make, state):
    plain = make()
    plain.load_state_dict(state)
    return plain.eval()


def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [(s.weights, s.pinned) for s in sites(model)],
        [s.generator.get_state() for s in sites(model)],
    )


def same(a, b):
    sa, wa, ga = a
    sb, wb, gb = b
    return (
        sa.keys() == sb.keys()
        and all(torch.equal(sa[k], sb[k]) for k in sa)
        and wa == wb
        and all(torch.equal(x, y) for x, y in zip(ga, gb))
    )


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("projection", ["sign", "stoch-sign"])
def test_a_baked_network_in_the_plain_class_gives_exactly_the_attached_outputs(case, projection):
    make, inputs = CASES[case]
    x = inputs()
    model = trained(make, projection, x)
    before = snapshot(model)
    state = bake(model)
    assert same(snapshot(model), before)  # the attached model is untouched
    assert list(state) == list(make().state_dict())  # the plain model's keys
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(plain_with(make, state)(x), expected)
        assert torch.equal(bake_model(model)(x), expected)
    assert same(snapshot(model), before)
    for s in sites(model):
        if projection == "sign":  # the binary weights: +-H with H the clip bound 1
            assert set(state[s.name].unique().tolist()) == {-1.0, 1.0}
        else:  # a random projection is tested, so baked, with its hidden weights
            assert torch.equal(state[s.name], s.hidden)
    if case == "tied":
        assert state["emb.weight"] is state["head.weight"]
    state[sites(model)[0].name].add_(1)  # a copy: writing into it leaves the model as it was
    assert same(snapshot(model), before)


def test_the_float_state_dict_is_not_the_binary_network_and_weights_can_be_forced():
    x = images()
    model = trained(cnn, "sign", x)
    with torch.no_grad():
        binary = model(x)
        assert not torch.equal(
            plain_with(cnn, model.state_dict())(x), binary
        )  # the bug baked fixes
        with rw.use_weights(model, "hidden"):
            assert torch.equal(plain_with(cnn, bake(model, "hidden"))(x), model(x))
    assert torch.equal(bake(model, "projected")[sites(model)[0].name], bake(model)["0.weight"])
    with rw.distort(model, "add-gauss:sigma=0.3", torch.Generator().manual_seed(0)):
        with torch.no_grad():  # inside a distortion the network runs with the pinned tensors
            assert torch.equal(plain_with(cnn, bake(model))(x), model(x))
    with pytest.raises(rw.UserError, match="random"):
        bake(trained(cnn, "stoch-sign", x, steps=1), "projected")
    with pytest.raises(rw.UserError, match="unknown weights"):
        bake(model, "binary")


@pytest.mark.parametrize("case", CASES)
def test_packed_files_round_trip_exactly_at_one_bit_per_binary_weight(case, tmp_path):
    make, inputs = CASES[case]
    x = inputs()
    model = trained(make, "sign", x)
    state = bake(model)
    size = save_baked(state, tmp_path / "packed.pt", packed=True)
    float_size = save_baked(state, tmp_path / "float.pt")
    assert size == (tmp_path / "packed.pt").stat().st_size
    back = load_baked(tmp_path / "packed.pt")
    assert list(back) == list(state) and all(torch.equal(back[k], state[k]) for k in state)
    assert all(back[k].dtype == state[k].dtype for k in state)
    with torch.no_grad():
        assert torch.equal(plain_with(make, back)(x), model(x))
    if case == "tied":
        assert back["emb.weight"] is back["head.weight"]
    plain = load_baked(tmp_path / "float.pt")  # the unpacked file is the state_dict itself
    assert all(torch.equal(plain[k], state[k]) for k in state)

    doc = torch.load(tmp_path / "packed.pt", weights_only=True)
    weights = {s.name for s in sites(model)} - set(doc["tied"])
    assert weights <= set(doc["packed"])
    for k, entry in doc["packed"].items():
        assert entry["bits"].dtype == torch.uint8
        assert entry["bits"].numel() == math.ceil(state[k].numel() / 8)  # 1/32 of float32
    sizes = packed_sizes(state)
    assert sizes["binary_packed_bytes"] == sum(
        math.ceil(state[k].numel() / 8) for k in doc["packed"]
    )
    assert sizes["binary_packed_bytes"] <= sizes["binary_float32_bytes"] / 32 + len(doc["packed"])
    overhead = 1024 * len(state) + 4096  # the zip container's headers, per tensor and per file
    assert size <= sizes["binary_packed_bytes"] + sizes["other_bytes"] + overhead
    assert float_size >= sizes["binary_float32_bytes"] + sizes["other_bytes"]


def test_a_float_network_packs_nothing_and_bad_files_get_one_line(tmp_path):
    model = cnn().eval()
    state = bake(model)  # never attached: its own weights
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    state = {k: v for k, v in state.items() if v.dim() >= 2}  # (initial batch-norm ones are +-1)
    save_baked(state, tmp_path / "f.pt", packed=True)
    assert torch.load(tmp_path / "f.pt", weights_only=True)["packed"] == {}
    with pytest.raises(rw.UserError, match="no baked file"):
        load_baked(tmp_path / "missing.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(rw.UserError, match="neither a state_dict"):
        load_baked(tmp_path / "list.pt")
    doc = torch.load(tmp_path / "f.pt", weights_only=True)
    doc["packed"]["x"] = {"bits": torch.zeros(3, dtype=torch.uint8), "scale": torch.tensor(1.0)}
    doc["packed"]["x"]["shape"] = [100]
    doc["keys"].append("x")
    torch.save(doc, tmp_path / "bad.pt")
    with pytest.raises(rw.UserError, match="x is not a packed tensor"):
        load_baked(tmp_path / "bad.pt")


def test_a_run_folder_exports_its_binary_network(tmp_path):
    config = rw.TrainConfig(
        model="mlp",
        width=0.25,
        dataset="demo",
        train_subset=500,
        test_subset=300,
        epochs=1,
        batch_size=50,
        projection="sign",
        out=str(tmp_path / "run"),
    )
    rw.train(config, progress=False)
    info = export_run(tmp_path / "run", tmp_path / "out" / "net.pt", packed=True)
    assert info["bytes"] == (tmp_path / "out" / "net.pt").stat().st_size
    assert info["weights"] == "projected" and info["binary_tensors"] >= 2
    model, cfg = rw.load(tmp_path / "run")
    plain = create_model("mlp", num_classes=10, in_shape=(1, 28, 28), width=0.25)
    plain.load_state_dict(load_baked(tmp_path / "out" / "net.pt"))
    plain.eval()
    attached, baked = rw.evaluate(model, cfg), rw.evaluate(plain, cfg)
    assert baked["error"] == attached["error"] and baked["loss"] == attached["loss"]
    with pytest.raises(rw.UserError, match="no checkpoint"):
        export_run(tmp_path / "nothing", tmp_path / "x.pt")
    with pytest.raises(rw.UserError, match="is a folder"):
        export_run(tmp_path / "run", tmp_path / "out")
    (tmp_path / "file").write_text("")
    with pytest.raises(rw.UserError, match="not a folder"):
        export_run(tmp_path / "run", tmp_path / "file" / "net.pt")
