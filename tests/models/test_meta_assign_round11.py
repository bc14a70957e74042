"""Round 11: PyTorch's deferred initialisation ``with torch.device("meta"): model = ...`` then
``model.load_state_dict(weights, assign=True)`` left the constants that no state_dict holds
(stencils, lifting and pooling tables) on the meta device, and the first forward failed with
"Cannot copy out of meta tensor; no data!". They are now computed at the load, on the loaded
weights' device; the G-CNN, which e2cnn cannot build on the meta device, says so in one line."""

from __future__ import annotations

import warnings

import pytest
import torch

from eqpdenet.models import InvariantPDEConfig, LiftedPDEConfig, build_model

FAMILIES = {
    "eqpdenet": {"hidden": 8},
    "invariant_pde": {"invariant_pde": InvariantPDEConfig(channels=[4, 6], blocks=[1, 1])},
    "lifted_pde": {"lifted_pde": LiftedPDEConfig(orientations=4, channels=[3, 4], blocks=[1, 1])},
    "lifted_pde-scales": {"lifted_pde": LiftedPDEConfig(orientations=4, channels=[2, 3],
                                                        blocks=[1, 1], scales=2,
                                                        boundary="background", center=True)},
    "cnn": {},
    "fcnn": {"hidden": 8},
}


def _build(kind: str, options: dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_model(kind.split("-")[0], **options)


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_a_model_built_on_meta_and_assigned_its_weights_computes_the_same_logits(kind):
    torch.manual_seed(0)
    reference = _build(kind, FAMILIES[kind]).eval()
    with torch.device("meta"):
        model = _build(kind, FAMILIES[kind])
    model.load_state_dict(reference.state_dict(), assign=True)
    model.eval()
    assert [name for name, b in model.named_buffers() if b.is_meta] == []
    assert [name for name, p in model.named_parameters() if p.is_meta] == []
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), rtol=0, atol=0)


def test_the_gcnn_on_meta_is_one_clear_error():
    pytest.importorskip("e2cnn")
    from eqpdenet.models import GCNNConfig

    with pytest.raises(NotImplementedError, match=r"^the G-CNN cannot be built on the meta "
                                                  r"device: e2cnn computes its filter bases"):
        with torch.device("meta"):
            build_model("gcnn", gcnn=GCNNConfig(channels=[2, 3], kernels=[5, 3], pool_after=[1]))
