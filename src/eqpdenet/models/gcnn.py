"""A group-equivariant CNN baseline built on e2cnn (Weiler & Cesa, 2019), an optional extra.

Rotation-equivariant convolutions on the cyclic group C_N (default C8): a lifting convolution
from the image to ``channels[0]`` regular feature fields, then equivariant convolutions between
regular fields (inner batch norm, ReLU; 2x2 max pooling after the layers in ``pool_after``, plain
or anti-aliased), then group pooling (max over the N rotations of each field: rotation-invariant
maps), global pooling over space and a linear classifier. Equivariance to rotations by multiples
of 2 pi / N is exact up to the pixel grid (rot90 is exact for N divisible by 4). The defaults
have 26,933 learned parameters (basis coefficients; e2cnn expands them into ordinary filters).

e2cnn 0.2.3 is pure Python (torch, numpy, scipy, sympy) and runs unchanged with torch 2.13 (it
emits a deprecation warning about uint8 masks, silenced here), except for a 1x1 first
convolution, which fails inside it and is refused (``gcnn.kernels[0] >= 3``):
``pip install eqpdenet[gcnn]``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..checks import (
    check_images,
    evaluation_mode,
    hooks_registered,
    require,
    require_int,
    require_lists,
    require_per_layer,
    require_positive,
)
from ..errors import MissingDependencyError
from ..geometry import halvings_stay_even
from ..process_state import Silenced, quiet_warnings
from .centering import recenter
from .inputs import check_model_input, family_options, require_image_size
from .perceptron import Standardize

__all__ = ["GCNN", "GCNNConfig"]


#: The largest rotation group C_N (e2cnn builds an N x N regular representation per field) and
#: the most layers a G-CNN may have (the baseline: C8, 5 layers).
MAX_GROUP_ORDER, MAX_LAYERS = 64, 1000

#: The widest anti-aliasing low-pass of ``pool = "antialiased"``, in pixels (its filter is
#: ``8 sigma + 1`` pixels wide).
MAX_POOL_SIGMA = 16.0


@dataclass
class GCNNConfig:
    """Options of :class:`GCNN`.

    Attributes:
        group_order: N of the rotation group C_N.
        channels: regular feature fields of each convolution (each field has N channels).
        kernels: kernel size of each convolution.
        pool_after: 2x2 max pooling after these layers (1-based).
        pool: ``"max"`` (2x2 max pooling, stride 2) or ``"antialiased"`` (e2cnn's
            ``PointwiseMaxPoolAntialiased``: 2x2 max at every pixel, then a Gaussian low-pass of
            std ``pool_sigma`` pixels sampled with stride 2; Zhang 2019). Neither has
            parameters. Both commute with quarter turns only where every pooling halves an
            even size (28 and 32 with the default two poolings: a relative logit change of
            about 5e-7 under rot90): on an odd size, or one that a pooling makes odd (25, 26,
            27), the stride-2 grid drops a row and a column on one side, a quarter turn moves
            them to another, and the logits change (by 0.03-0.08 relative, measured);
            :attr:`GCNN.quarter_turn_invariant` says which.
        pool_sigma: the anti-aliasing low-pass's standard deviation, in pixels (e2cnn's
            default 0.6).
        readout: global pooling over space after group pooling: ``"max"`` or ``"mean"``.
        center: move every image by whole pixels so that its centre of mass sits at the frame's
            centre, first (:mod:`eqpdenet.models.centering`; the same option as
            ``lifted_pde.center``).
    """

    group_order: int = 8
    # 26,933 parameters with C8 (the issue asks for 25-30k)
    channels: list[int] = field(default_factory=lambda: [7, 10, 12, 14, 14])
    kernels: list[int] = field(default_factory=lambda: [5, 3, 3, 3, 3])
    pool_after: list[int] = field(default_factory=lambda: [1, 3])
    pool: str = "max"
    pool_sigma: float = 0.6
    readout: str = "max"
    center: bool = False

    def __post_init__(self):
        require_lists(self, "gcnn.")
        # C_1 is no rotation group: e2cnn refuses it (a plain CNN is model.kind = 'cnn')
        require_int(self.group_order, "gcnn.group_order", 2, maximum=MAX_GROUP_ORDER)
        require(len(self.channels) <= MAX_LAYERS, "gcnn.channels",
                f"{len(self.channels):,} layers, more than the bound of {MAX_LAYERS:,}")
        require_per_layer(self, "gcnn.", "channels", "kernels", "layer")
        for index, (c, k) in enumerate(zip(self.channels, self.kernels, strict=True)):
            require_int(c, f"gcnn.channels[{index}]", 1)
            # require_int, as for channels: isinstance(k, int) took True for 1 and refused a
            # numpy integer as "not an odd positive integer"
            k = require_int(k, f"gcnn.kernels[{index}]", 1)
            require(k % 2 == 1, f"gcnn.kernels[{index}]", f"must be an odd positive integer, "
                    f"got {k}")
        # e2cnn 0.2.3's basis of a 1x1 convolution from the image to regular fields has one
        # element, and assigning it through a uint8 mask is a masked_fill_ that torch 2.x
        # refuses (a raw RuntimeError inside e2cnn when the model was built); later 1x1 layers
        # have several elements and build
        require(self.kernels[0] >= 3, "gcnn.kernels[0]",
                f"must be at least 3: the first (lifting) convolution of 1x1 fails inside e2cnn "
                f"0.2.3 with this torch; got {self.kernels[0]}")
        for index, p in enumerate(self.pool_after):
            require_int(p, f"gcnn.pool_after[{index}]", 1, maximum=len(self.channels))
        # kernels and pool_after as plain ints (a numpy integer is written to no TOML file)
        self.kernels, self.pool_after = [int(k) for k in self.kernels], [int(p) for p in
                                                                          self.pool_after]
        # one pooling per layer: [1, 1] built one, and quarter_turn_invariant counted two
        require(len(set(self.pool_after)) == len(self.pool_after), "gcnn.pool_after",
                f"lists a layer twice (one pooling per layer at most): {self.pool_after!r}")
        require(self.pool in ("max", "antialiased"), "gcnn.pool", "must be 'max' or 'antialiased'")
        sigma = require_positive(self.pool_sigma, "gcnn.pool_sigma")
        # e2cnn's low-pass is a dense (8 sigma + 1)^2 filter per channel: 1e300 failed in torch
        require(sigma <= MAX_POOL_SIGMA, "gcnn.pool_sigma",
                f"must be at most {MAX_POOL_SIGMA:g} pixels (e2cnn's default 0.6), got {sigma:.3g}")
        require(self.readout in ("max", "mean"), "gcnn.readout", "must be 'max' or 'mean'")
        require(isinstance(self.center, bool), "gcnn.center",
                f"must be true or false, got {self.center!r}")


#: Warnings raised from e2cnn's own code (its modules): what it says of its internals (a
#: deprecated torch idiom it uses) is not the user's to act on.
E2CNN_WARNINGS = Silenced(module=r"e2cnn(\.|$)")
#: e2cnn samples its filter bases with uint8 masks, which torch warns of (from e2cnn's code).
_UINT8_MASK = Silenced(UserWarning, r"indexing with dtype torch\.uint8 is now deprecated")


def _e2cnn():
    try:
        with quiet_warnings(E2CNN_WARNINGS):
            from e2cnn import gspaces
            from e2cnn import nn as enn
    except ImportError as error:
        raise MissingDependencyError("the G-CNN baseline needs e2cnn, an optional dependency: "
                          "pip install 'eqpdenet[gcnn]'") from error
    return gspaces, enn


_CACHES = (".filter", ".expanded_bias")


def _without_filter_caches(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix) and k.endswith(_CACHES)]:
        del state_dict[key]
    return state_dict


def _ignore_filter_caches(module, incompatible_keys):
    # Our state dicts hold no cache (above), and a cache in someone else's is derived data: the
    # filters are always expanded from the loaded weights (GCNN.train).
    for keys in (incompatible_keys.missing_keys, incompatible_keys.unexpected_keys):
        keys[:] = [k for k in keys if not k.endswith(_CACHES)]


class GCNN(nn.Module):
    """Images ``(B, in_channels, image_size, image_size)`` -> logits ``(B, classes)``.

    Hooks registered on ``features`` or on its last module (the group pooling) fire: the
    model then calls ``features`` as a module (and gives the same logits)."""

    def __init__(self, gcnn: GCNNConfig | None = None, image_size: int = 28, in_channels: int = 1,
                 classes: int = 10, input_mean: float = 0.0, input_std: float = 1.0):
        super().__init__()
        gspaces, enn = _e2cnn()
        self.config = gcnn = family_options(gcnn, GCNNConfig, "gcnn")
        if torch.get_default_device().type == "meta":
            # e2cnn samples its filter bases on the host while it builds: on the meta device it
            # failed with "Cannot copy out of meta tensor" from inside e2cnn
            raise NotImplementedError(
                "the G-CNN cannot be built on the meta device: e2cnn computes its filter bases "
                "from tensor values while it builds; build it on the CPU (its parameters are "
                "small), then move it with .to(device)")
        #: Each 2x2 max pooling halves the image (rounding down): k of them need 2^k pixels.
        self.min_image_size = 2 ** len(set(gcnn.pool_after))
        self.image_size = require_image_size(
            image_size, self.min_image_size,
            f"{len(set(gcnn.pool_after))} 2x2 max pooling(s), after layers {gcnn.pool_after}")
        self.in_channels = require_int(in_channels, "in_channels", 1)
        self.standardize = Standardize(input_mean, input_std)
        space = gspaces.Rot2dOnR2(N=gcnn.group_order)
        self._input_type = enn.FieldType(space, in_channels * [space.trivial_repr])
        layers, current = [], self._input_type
        with quiet_warnings(_UINT8_MASK, E2CNN_WARNINGS):
            for index, (fields, kernel) in enumerate(zip(gcnn.channels, gcnn.kernels,
                                                         strict=True), 1):
                out = enn.FieldType(space, fields * [space.regular_repr])
                layers += [enn.R2Conv(current, out, kernel, padding=kernel // 2, bias=False),
                           enn.InnerBatchNorm(out), enn.ReLU(out, inplace=True)]
                if index in gcnn.pool_after and gcnn.pool == "max":
                    layers.append(enn.PointwiseMaxPool(out, 2))
                elif index in gcnn.pool_after:
                    layers.append(enn.PointwiseMaxPoolAntialiased(out, 2, 2,
                                                                  sigma=gcnn.pool_sigma))
                current = out
            layers.append(enn.GroupPooling(current))
            self.features = enn.SequentialModule(*layers)
        _unshare_basis_expansions(self.features)
        # The classes, not the e2cnn module: a module object cannot be pickled, and
        # copy.deepcopy (AveragedModel, weight averaging) pickles what it cannot copy otherwise.
        self._geometric_tensor, self._r2conv = enn.GeometricTensor, enn.R2Conv
        self.classifier = nn.Linear(gcnn.channels[-1], require_int(classes, "classes", 1))
        # The state dict holds no filter cache (see train; e2cnn's anti-aliased pooling keeps
        # its fixed low-pass as a buffer named "filter" too, rebuilt by the constructor).
        self._register_state_dict_hook(_without_filter_caches)
        self.register_load_state_dict_post_hook(_ignore_filter_caches)
        self.train(True)  # drops the zero filter buffers R2Conv registers at construction

    @property
    def quarter_turn_invariant(self) -> bool:
        """Whether the logits are invariant under quarter turns of the input (to rounding): the
        group C_N contains them (N divisible by 4) and every pooling halves an even size."""
        return (self.config.group_order % 4 == 0
                and halvings_stay_even(self.image_size, len(self.config.pool_after)))

    @property
    def _enn(self):
        """e2cnn's ``nn`` module, looked up when asked (a module object in the instance would
        not deep-copy)."""
        return _e2cnn()[1]

    def backward_bytes(self, batch_size: int, element_size: int = 4) -> int:
        """The bytes one training step on ``batch_size`` images keeps for its backward pass (what
        the memory preflight of :mod:`eqpdenet.app.preflight` needs; the parameters aside).

        Per image, in values of ``element_size`` bytes, for fields of ``F`` regular fields of
        ``N`` channels (``group_order``): the first convolution's input; per layer the
        convolution's output (kept by the batch norm) and the ReLU's output, ``2 F N`` maps at
        the layer's size; a max pooling keeps the indices of its maxima (int64), ``F N`` maps at
        its output's size, and its output where a convolution takes it; the anti-aliased pooling
        keeps the indices and the output of its 2x2 maximum at stride 1 (``size - 1``), and its
        low-pass's output where a convolution takes it; the group pooling keeps its indices
        (``F`` maps), the ``max`` readout its input and maxima. Once per step whatever the
        batch: every convolution's filter expanded from its basis (``F_out N x F_in N x k^2``)
        and the batch norms' statistics. The pooled sizes are those of PyTorch's own operators
        (run on the ``meta`` device). Counted with ``torch.autograd.graph.saved_tensors_hooks``:
        tests/app/test_preflight_round6.py holds the estimate within 1 to 1.2 times what
        autograd saves.
        """
        enn = self._enn
        size = self.image_size
        values, indices, fixed = self.in_channels * size**2, 0, 0
        pooled_output = 0  # kept where a convolution takes it
        *body, _ = self.features._modules.values()
        for module in body:
            if isinstance(module, enn.R2Conv):
                fixed += module.out_type.size * module.in_type.size * module.kernel_size**2
                values += pooled_output + module.out_type.size * size**2  # the batch norm's input
                pooled_output = 0
            elif isinstance(module, enn.InnerBatchNorm):
                fixed += 2 * len(module.out_type)  # its statistics, per field
            elif isinstance(module, enn.ReLU):
                values += module.out_type.size * size**2  # its output
            elif isinstance(module, enn.PointwiseMaxPool):
                channels = module.out_type.size
                antialiased = isinstance(module, enn.PointwiseMaxPoolAntialiased)
                size = _pooled_size(size, module.kernel_size, 1 if antialiased else module.stride,
                                    module.padding, module.dilation, module.ceil_mode)
                indices += channels * size**2
                if antialiased:  # the maximum, kept by the low-pass
                    values += channels * size**2
                    size = _low_passed_size(size, module.filter.shape[-1], module.stride,
                                            module._pad)
                pooled_output = channels * size**2
        fields = self.config.channels[-1]
        indices += fields * size**2  # the group pooling's
        values += (fields * size**2 if self.config.readout == "max" else 0) + 2 * fields
        return int(batch_size * (values * element_size + indices * 8) + fixed * element_size)

    def _convs(self) -> list[nn.Module]:
        return [m for m in self.features.modules() if isinstance(m, self._r2conv)]

    def train(self, mode: bool = True) -> GCNN:
        """Sets the mode of every module but the equivariant convolutions, which stay in
        training mode: that mode only decides, in e2cnn 0.2.3, whether an ``R2Conv`` expands its
        filter from its weights at every call or uses the filter it expanded when ``.eval()`` was
        called. That cache, kept with its autograd graph, made evaluation mode compute from
        stale filters (weights changed in place, ``torch.func.functional_call`` with other
        parameters, a second backward pass through the freed graph) and made the model
        impossible to deep-copy. Expanding at every call costs the five expansions, about 1 ms
        per forward with the default configuration on one CPU core (one image: 5.3 -> 5.9 ms;
        a batch of 100: within the noise of 110-120 ms; 2026-12-05, 2-core VM): a cache keyed
        by the weights' identity and version would win that back for single images only, and
        would be a second source of truth for the filters."""
        with torch.no_grad():  # e2cnn's eval() expands once more; that cache is dropped below
            super().train(mode)
        for conv in self._convs():
            conv.train(True)
        return self

    def forward(self, images: Tensor) -> Tensor:
        x = check_model_input(self, images).images
        if self.config.center:
            x = recenter(x)
        if x.shape[0] == 0:
            # No image, no features; e2cnn's batch norms cannot reshape an empty batch (0.2.3).
            # Empty features taken from the input, so that a backward pass reaches it.
            features = x.flatten(1)[:, :1].expand(-1, self.classifier.in_features)
            return self.classifier(features).to(images.dtype)
        x = self._geometric_tensor(self.standardize(x), self._input_type)
        # The last module, e2cnn's GroupPooling, writes into a float32 tensor whatever the input's
        # dtype (e2cnn 0.2.3): the same maximum over each regular field's N channels is taken
        # here, in the fields' own dtype, by the same operator (torch.max over the field, whose
        # backward picks the same one of tied channels): in float32 the forward and the backward
        # are bitwise e2cnn's. The module stays in `features` for the state dict and the export.
        # No warnings.catch_warnings here: e2cnn's forward warns of nothing (its uint8-mask
        # warning comes at construction), and catch_warnings saves and restores the process's
        # filters, which two threads running the model interleaved, leaving every warning of the
        # process ignored (round 9).
        *body, last = self.features._modules.values()
        if hooks_registered((self.features, last)):
            maps = self._features_called(x, last)
        else:
            for module in body:
                if isinstance(module, self._r2conv) and not module.training:
                    module.train(True)  # put in evaluation mode by itself (see train)
                x = module(x)
            maps = self._group_pool(x.tensor)
        return self.classifier(_readout(maps, self.config.readout)).to(images.dtype)

    def _group_pool(self, fields: Tensor) -> Tensor:
        """The maximum over each regular field's ``N`` channels, in the fields' dtype."""
        return fields.unflatten(1, (-1, self.config.group_order)).max(2).values

    def _features_called(self, x, pooling: nn.Module) -> Tensor:
        """``features`` called as a module, and the group pooling in it (forward's result, to
        the bit): taken where a hook is registered on either (round 14: they never fired), the
        modules being called one by one otherwise. e2cnn's group pooling computes in float32;
        a forward hook put first on it for this call replaces its output by :meth:`_group_pool`
        of its input, so that the hooks registered on it after (and on ``features``) see the
        output forward uses. Global forward hooks run before it and see e2cnn's."""
        for conv in self._convs():
            if not conv.training:
                conv.train(True)  # put in evaluation mode by itself (see train)
        geometric = self._geometric_tensor

        def exact(module, inputs, output):
            return geometric(self._group_pool(inputs[0].tensor), output.type)

        handle = pooling.register_forward_hook(exact, prepend=True)
        try:
            return self.features(x).tensor
        finally:
            handle.remove()

    def export_module(self) -> nn.Module:
        """The same map from plain PyTorch modules, for exporters (:mod:`eqpdenet.export`):
        e2cnn's own ``export()`` of the equivariant layers (each ``R2Conv`` a ``Conv2d`` with
        its expanded filter, batch norms with their statistics), a copy of the current weights
        in evaluation mode; the standardisation and the classifier are shared."""
        # in evaluation mode: e2cnn's export() expands each filter from the current weights;
        # each submodule's own mode restored after (a frozen batch norm stays frozen)
        with evaluation_mode(self), quiet_warnings(E2CNN_WARNINGS):
            features = self.features.export()
        return _PlainGCNN(self, features.eval())


def _unshare_basis_expansions(features: nn.Module) -> None:
    """Give ``features`` its own copies of e2cnn's basis-expansion modules: e2cnn 0.2.3 shares one
    module (the sampled basis, a buffer) between every convolution of the same shape in the
    process, so moving or casting one model (``.to("cuda")``, ``.double()``) would move or cast
    it under every other model too (found when one G-CNN was cast to float64 beside another).
    Each copy is put in its convolution's ``weights``' dtype and on their device: the shared
    module keeps the dtype of the model it was first built for, so a G-CNN built under another
    default dtype (``torch.set_default_dtype``) than an earlier one got float32 bases with
    float64 weights, or the reverse, and failed at its first filter expansion (round 14)."""
    def unshare(parent: nn.Module, weights: Tensor | None) -> None:
        own = getattr(parent, "weights", None)  # an R2Conv's; its expansions are below it
        weights = own if isinstance(own, Tensor) else weights
        for name, child in list(parent._modules.items()):
            if type(child).__name__ == "SingleBlockBasisExpansion":
                child = copy.deepcopy(child)
                parent._modules[name] = (child if weights is None
                                         else child.to(weights.device, weights.dtype))
            elif child is not None:
                unshare(child, weights)

    unshare(features, None)


def _pooled_size(size: int, kernel, stride, padding, dilation, ceil_mode: bool) -> int:
    """The side of a ``size x size`` map after ``max_pool2d`` with these arguments (PyTorch's
    own arithmetic, on the ``meta`` device)."""
    meta = torch.empty(1, 1, size, size, device="meta")
    return int(nn.functional.max_pool2d(meta, kernel, stride, padding, dilation,
                                        ceil_mode).shape[-1])


def _low_passed_size(size: int, taps: int, stride, padding) -> int:
    """The side of a ``size x size`` map after the anti-aliased pooling's low-pass (``conv2d``
    with a ``taps x taps`` filter, on the ``meta`` device)."""
    meta = torch.empty(1, 1, size, size, device="meta")
    return int(nn.functional.conv2d(meta, torch.empty(1, 1, taps, taps, device="meta"),
                                    stride=stride, padding=padding).shape[-1])


def _readout(maps: Tensor, readout: str) -> Tensor:
    return maps.amax(dim=(-2, -1)) if readout == "max" else maps.mean(dim=(-2, -1))


class _PlainGCNN(nn.Module):
    """:class:`GCNN`'s map with its e2cnn modules exported to plain PyTorch modules."""

    def __init__(self, model: GCNN, features: nn.Module):
        super().__init__()
        self.in_channels, self.image_size = model.in_channels, model.image_size
        self.readout, self.center = model.config.readout, model.config.center
        self.standardize, self.features, self.classifier = (model.standardize, features,
                                                            model.classifier)

    def forward(self, images: Tensor) -> Tensor:
        check_images(images, "images", channels=self.in_channels,
                     size=(self.image_size, self.image_size))
        x = recenter(images) if self.center else images
        return self.classifier(_readout(self.features(self.standardize(x)), self.readout))
