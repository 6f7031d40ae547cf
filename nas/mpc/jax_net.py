"""Our networks and their MPC pieces as jax functions, in inference form, for SPU (numpy + jax only).

`network_function` mirrors `nas.static_model` op for op (same head order, the formulas of `nas/ops`, layer and
batch norm eps 1e-5, torch's exact-erf GELU and hard-swish), with every BatchNorm folded into its conv's weight
and bias: the server folds its weights in the clear before sharing them, so a two-party run never normalises.
Weights are arguments, never closed over, so SPU sees them as secret like the image (`forward`). A transformer
layer runs exactly the pieces `nas.mpc.pieces.pieces_of` lists for it, in order (attention heads are grouped by
kind like `nas.ops.attention.attend`), and a conv block runs the function its `block` piece is measured with.

Parameters use the names and shapes of `static_model.build(description).state_dict()` (`param_shapes`), so the
torch side can pass a trained model's weights as an .npz; `random_params` makes such a dict without torch.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nas.blocks import Block
from nas.mpc.pieces import Piece
from nas.ops import layer_kinds

Array = Any  # a jax or numpy array
Params = Mapping[str, np.ndarray]
NORM_EPS = 1e-5  # torch's LayerNorm and BatchNorm2d default
FORMAT_VERSIONS = (1, 2, 3)
ATTENTION_OPTIONS = {"v_dwconv": False, "rel_pos_bias": False, "proj_act": False, "qkv_bias": True}
_OPS = Path(__file__).resolve().parents[1] / "ops"


def _op_constant(module: str, name: str) -> float:
    """The literal `name = <number>` of `nas/ops/<module>.py`, read without importing it (it imports torch)."""
    tree = ast.parse((_OPS / f"{module}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return float(ast.literal_eval(node.value))
    raise ValueError(f"nas/ops/{module}.py defines no constant {name}")


QUAD_SHIFT = _op_constant("attn_quad", "SHIFT")
QUAD_EPS = _op_constant("attn_quad", "EPS")
RELU_SOFTMAX_EPS = _op_constant("attn_relu_softmax", "EPS")


# ---- elementwise ops ---------------------------------------------------------------------------------
def relu(x: Array) -> Array:
    return jnp.maximum(x, 0.0)


def hardsigmoid(x: Array) -> Array:
    """torch's hardsigmoid: relu6(x + 3) / 6."""
    return jnp.minimum(jnp.maximum(x + 3.0, 0.0), 6.0) * (1.0 / 6.0)


def hardswish(x: Array) -> Array:
    """torch's hardswish: x relu6(x + 3) / 6."""
    return x * hardsigmoid(x)


def gelu(x: Array) -> Array:
    """torch's default GELU: the exact erf form."""
    return jax.nn.gelu(x, approximate=False)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"gelu": gelu, "relu": relu, "hswish": hardswish}


# ---- attention kinds (nas/ops/attn_<kind>.py) ---------------------------------------------------------
def _normalised_by_row_sum(weights: Array, eps: float = 0.0) -> Array:
    """weights / (row sum + eps) as one reciprocal per row times the weights: SPU would otherwise take the
    reciprocal of the broadcast N x N denominator (3.5x the bytes of a 64 x 64 softmax, 6x a ReLU-softmax's)."""
    total = weights.sum(axis=-1, keepdims=True)
    return weights * (1.0 / (total + eps if eps else total))


def softmax(scores: Array) -> Array:
    """torch.softmax over the keys: exp(s - row max), normalised (the max keeps fixed-point exp in range)."""
    return _normalised_by_row_sum(jnp.exp(scores - scores.max(axis=-1, keepdims=True)))


NORMALISERS: dict[str, Callable[[Array], Array]] = {
    "softmax": softmax,
    "relu_softmax": lambda s: _normalised_by_row_sum(relu(s), RELU_SOFTMAX_EPS),
    "scaling": lambda s: s * (1.0 / s.shape[-1]),
    "quad": lambda s: _normalised_by_row_sum((s + QUAD_SHIFT) ** 2, QUAD_EPS),
}


def normaliser(kind: str) -> Callable[[Array], Array]:
    try:
        return NORMALISERS[kind]
    except KeyError:
        known = ", ".join(sorted(NORMALISERS))
        raise ValueError(f"no jax version of attention kind {kind!r} (have: {known})") from None


# ---- layers ------------------------------------------------------------------------------------------
def linear(x: Array, weight: Array, bias: Array | None) -> Array:
    """x W^T (+ b), W in torch's cout x cin layout."""
    y = x @ weight.T
    return y if bias is None else y + bias


def layer_norm(x: Array, weight: Array, bias: Array) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    return centred * jax.lax.rsqrt(var + NORM_EPS) * weight + bias


def conv(x: Array, weight: Array, bias: Array | None, stride: int = 1, groups: int = 1) -> Array:
    """A `same`-padded conv (padding kernel // 2), NCHW / OIHW like torch."""
    pad = weight.shape[-1] // 2
    y = jax.lax.conv_general_dilated(x, weight, (stride, stride), [(pad, pad), (pad, pad)],
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=groups)
    return y if bias is None else y + bias[None, :, None, None]


def conv_act(x: Array, weight: Array, bias: Array, stride: int = 1, groups: int = 1, act: bool = True) -> Array:
    """static_model's ConvBNAct with the BatchNorm folded into (weight, bias)."""
    y = conv(x, weight, bias, stride, groups)
    return hardswish(y) if act else y


def squeeze_excite(x: Array, w: Params, prefix: str) -> Array:
    pooled = x.mean(axis=(2, 3), keepdims=True)
    hidden = relu(conv(pooled, w[prefix + "reduce.weight"], w[prefix + "reduce.bias"]))
    return x * hardsigmoid(conv(hidden, w[prefix + "expand.weight"], w[prefix + "expand.bias"]))


def avg_pool(x: Array, stride: int) -> Array:
    """torch's avg_pool2d(x, stride, padding=side % 2) (zeros counted): `nas.ops.conv.pool_shortcut`'s pool."""
    pad = x.shape[-1] % 2
    if pad:
        x = jnp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    batch, channels, height, width = x.shape
    out_h, out_w = (height - stride) // stride + 1, (width - stride) // stride + 1
    x = x[:, :, :out_h * stride, :out_w * stride].reshape(batch, channels, out_h, stride, out_w, stride)
    return x.sum(axis=(3, 5)) * (1.0 / stride**2)


def mbconv(x: Array, w: Params, prefix: str, cin: int, cout: int, stride: int, se: bool, shortcut: str,
           expand_conv: bool) -> Array:
    """static_model.MBConv (kernel and expand ratio come with the weights)."""
    h = x
    if expand_conv:
        h = conv_act(h, w[prefix + "expand.weight"], w[prefix + "expand.bias"])
    hidden = h.shape[1]
    h = conv_act(h, w[prefix + "depthwise.weight"], w[prefix + "depthwise.bias"], stride, groups=hidden)
    if se:
        h = squeeze_excite(h, w, prefix + "se.")
    h = conv_act(h, w[prefix + "project.weight"], w[prefix + "project.bias"], act=False)
    if stride == 1 and cin == cout:
        return x + h
    if shortcut == "avgpool_conv":
        pooled = avg_pool(x, stride) if stride > 1 else x
        return h + (pooled if cin == cout else conv(pooled, w[prefix + "shortcut.weight"], None))
    return h


def head(x: Array, w: Params, prefix: str, final: bool) -> Array:
    """static_model.Head: 1x1 conv + hard-swish, global average pool, [linear + hard-swish], classifier."""
    y = conv_act(x, w[prefix + "expand.weight"], w[prefix + "expand.bias"]).mean(axis=(2, 3))
    if final:
        y = hardswish(linear(y, w[prefix + "final.weight"], w[prefix + "final.bias"]))
    return linear(y, w[prefix + "classifier.weight"], w[prefix + "classifier.bias"])


def depthwise_tokens(x: Array, weight: Array, side: int) -> Array:
    """A 3x3 depthwise conv (no bias) of tokens B x N x L over their side x side grid."""
    batch, _, width = x.shape
    grid = x.transpose(0, 2, 1).reshape(batch, width, side, side)
    return conv(grid, weight, None, groups=width).reshape(batch, width, side * side).transpose(0, 2, 1)


def relative_position_index(side: int) -> np.ndarray:
    """`nas.ops.attention.relative_position_index(side, side)` (public: it depends on the shape only)."""
    grid = np.arange(side)
    coords = np.stack(np.meshgrid(grid, grid, indexing="ij")).reshape(2, -1)
    offsets = coords[:, :, None] - coords[:, None, :] + (side - 1)
    return offsets[0] * (2 * side - 1) + offsets[1]


def relative_bias(table: Array, side: int) -> Array:
    """The 1 x heads x N x N bias of a ((2 side - 1)^2 x heads) table (a gather at public indices: local)."""
    index = relative_position_index(side)
    n, heads = index.shape[0], table.shape[1]
    return jnp.take(table, index.reshape(-1), axis=0).reshape(n, n, heads).transpose(2, 0, 1)[None]


def attn_core(q: Array, k: Array, v: Array, kind: str, bias: Array | None = None) -> Array:
    """normalise(q k^T head_dim^-0.5 (+ bias)) v over heads (q, k: B x heads x N x d, v: B x heads x N x dv)."""
    scores = (q @ jnp.swapaxes(k, -1, -2)) * q.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias
    return normaliser(kind)(scores) @ v


def attend(q: Array, k: Array, v: Array, bias: Array | None, kinds: tuple[str, ...]) -> Array:
    """`nas.ops.attention.attend`: one attn_core per kind (sorted), heads of a kind together, then reordered."""
    heads = q.shape[1]
    if len(set(kinds)) == 1:
        return attn_core(q, k, v, kinds[0], bias)
    if len(kinds) != heads:
        raise ValueError(f"{len(kinds)} attention kinds for {heads} heads")
    parts, order = [], []
    for kind in sorted(set(kinds)):
        index = np.array([h for h, name in enumerate(kinds) if name == kind])
        part_bias = None if bias is None else jnp.take(bias, index, axis=1)
        parts.append(attn_core(jnp.take(q, index, axis=1), jnp.take(k, index, axis=1), jnp.take(v, index, axis=1),
                               kind, part_bias))
        order += index.tolist()
    inverse = np.array(sorted(range(heads), key=order.__getitem__))
    return jnp.take(jnp.concatenate(parts, axis=1), inverse, axis=1)


def attention(x: Array, w: Params, prefix: str, head_dim: int, side: int, kinds: tuple[str, ...],
              options: Mapping[str, bool]) -> Array:
    """static_model.Attention (pre-norm, residual added)."""
    batch, tokens, _ = x.shape
    heads = w[prefix + "qk.weight"].shape[0] // (2 * head_dim)
    y = layer_norm(x, w[prefix + "norm.weight"], w[prefix + "norm.bias"])
    qk = linear(y, w[prefix + "qk.weight"], w.get(prefix + "qk.bias"))
    q, k = qk.reshape(batch, tokens, 2, heads, head_dim).transpose(2, 0, 3, 1, 4)
    v = linear(y, w[prefix + "v.weight"], w.get(prefix + "v.bias"))
    if options["v_dwconv"]:
        v = depthwise_tokens(v, w[prefix + "v_conv.weight"], side)
    v_dim = v.shape[-1] // heads
    v = v.reshape(batch, tokens, heads, v_dim).transpose(0, 2, 1, 3)
    bias = relative_bias(w[prefix + "rel_bias"], side) if options["rel_pos_bias"] else None
    out = attend(q, k, v, bias, kinds).transpose(0, 2, 1, 3).reshape(batch, tokens, heads * v_dim)
    if options["proj_act"]:
        out = hardswish(out)
    return x + linear(out, w[prefix + "proj.weight"], w[prefix + "proj.bias"])


def feed_forward(x: Array, w: Params, prefix: str, act: str) -> Array:
    """static_model.FeedForward (pre-norm, residual added)."""
    y = layer_norm(x, w[prefix + "norm.weight"], w[prefix + "norm.bias"])
    y = ACTIVATIONS[act](linear(y, w[prefix + "fc1.weight"], w[prefix + "fc1.bias"]))
    return x + linear(y, w[prefix + "fc2.weight"], w[prefix + "fc2.bias"])


# ---- descriptions: parameter layout and forward ------------------------------------------------------
def make_divisible(value: float, divisor: int = 8) -> int:
    """`static_model.make_divisible` (the squeeze-excite width; a copy: that module imports torch)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_out(side: int, stride: int) -> int:
    return (side - 1) // stride + 1


def _conv_options(stage: dict[str, Any], expand: int, version: int) -> dict[str, Any]:
    if version == 1:
        return {"shortcut": "none", "expand_conv": True}
    return {"shortcut": stage.get("shortcut", "none"), "expand_conv": expand > 1}


def _attention_options(stage: dict[str, Any], version: int) -> dict[str, bool]:
    return dict(ATTENTION_OPTIONS) if version == 1 else {k: bool(stage.get(k, d)) for k, d in ATTENTION_OPTIONS.items()}


def _conv_bn_shapes(prefix: str, cin: int, cout: int, kernel: int, groups: int = 1) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {f"{prefix}.0.weight": (cout, cin // groups, kernel, kernel)}
    for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.1.{name}"] = (cout,)
    shapes[f"{prefix}.1.num_batches_tracked"] = ()
    return shapes


def _mbconv_shapes(prefix: str, cin: int, cout: int, expand: int, kernel: int, stride: int, se: bool,
                   shortcut: str, expand_conv: bool) -> dict[str, tuple[int, ...]]:
    hidden = cin * expand
    shapes = _conv_bn_shapes(prefix + "expand", cin, hidden, 1) if expand_conv else {}
    shapes.update(_conv_bn_shapes(prefix + "depthwise", hidden, hidden, kernel, hidden))
    if se:
        mid = make_divisible(hidden / 4)
        shapes.update({prefix + "se.reduce.weight": (mid, hidden, 1, 1), prefix + "se.reduce.bias": (mid,),
                       prefix + "se.expand.weight": (hidden, mid, 1, 1), prefix + "se.expand.bias": (hidden,)})
    shapes.update(_conv_bn_shapes(prefix + "project", hidden, cout, 1))
    if not (stride == 1 and cin == cout) and shortcut == "avgpool_conv" and cin != cout:
        shapes[prefix + "shortcut.weight"] = (cout, cin, 1, 1)
    return shapes


def _check_description(network: dict[str, Any]) -> int:
    version = network.get("format_version")
    if version not in FORMAT_VERSIONS:
        raise ValueError(f"network description format_version must be one of {FORMAT_VERSIONS}, got {version!r}")
    return int(version)


def param_shapes(network: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every entry of `static_model.build(network).state_dict()`."""
    version = _check_description(network)
    stem = network["stem"]
    shapes = _conv_bn_shapes("stem", network["in_channels"], stem["channels"], stem["kernel"])
    side, cin = conv_out(network["resolution"], stem["stride"]), stem["channels"]
    for i, stage in enumerate(network["stages"]):
        cout = stage["channels"]
        if stage["type"] == "conv":
            for j, layer in enumerate(stage["layers"]):
                stride = stage["stride"] if j == 0 else 1
                shapes.update(_mbconv_shapes(f"stages.{i}.{j}.", cin, cout, layer["expand"], layer["kernel"], stride,
                                             stage["se"], **_conv_options(stage, layer["expand"], version)))
                cin = cout
            side = conv_out(side, stage["stride"]) if stage["layers"] else side
            continue
        expand = stage["downsample_expand"]
        se = stage.get("downsample_se", False) if version > 1 else False
        shapes.update(_mbconv_shapes(f"stages.{i}.downsample.", cin, cout, expand, 3, stage["stride"], se,
                                     **_conv_options(stage, expand, version)))
        side, cin = conv_out(side, stage["stride"]), cout
        options = _attention_options(stage, version)
        heads, head_dim = cout // stage["head_dim"], stage["head_dim"]
        for j, layer in enumerate(stage["layers"]):
            a, f = f"stages.{i}.layers.{j}.0.", f"stages.{i}.layers.{j}.1."
            width, hidden = heads * layer["v_scale"] * head_dim, cout * layer["mlp_ratio"]
            shapes.update({a + "norm.weight": (cout,), a + "norm.bias": (cout,),
                           a + "qk.weight": (2 * heads * head_dim, cout), a + "v.weight": (width, cout)})
            if options["qkv_bias"]:
                shapes.update({a + "qk.bias": (2 * heads * head_dim,), a + "v.bias": (width,)})
            if options["v_dwconv"]:
                shapes[a + "v_conv.weight"] = (width, 1, 3, 3)
            if options["rel_pos_bias"]:
                shapes[a + "rel_bias"] = ((2 * side - 1) ** 2, heads)
            shapes.update({a + "proj.weight": (cout, width), a + "proj.bias": (cout,),
                           f + "norm.weight": (cout,), f + "norm.bias": (cout,), f + "fc1.weight": (hidden, cout),
                           f + "fc1.bias": (hidden,), f + "fc2.weight": (cout, hidden), f + "fc2.bias": (cout,)})
    spec = network["head"]
    final = spec.get("final", 0) if version > 1 else 0
    shapes.update(_conv_bn_shapes("head.expand", cin, spec["channels"], 1))
    if final:
        shapes.update({"head.final.weight": (final, spec["channels"]), "head.final.bias": (final,)})
    shapes.update({"head.classifier.weight": (network["num_classes"], final or spec["channels"]),
                   "head.classifier.bias": (network["num_classes"],)})
    return shapes


def _random_array(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name.endswith("num_batches_tracked"):
        return np.array(0, dtype=np.int64)
    if name.endswith("running_var"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if name.endswith(("running_mean", "bias")):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    if name.endswith("norm.weight") or (name.endswith(".1.weight") and len(shape) == 1):  # norm scales
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (rng.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32)


def random_params(network: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """A state dict of `network` with random values (MPC cost does not depend on them)."""
    rng = np.random.default_rng(seed)
    return {name: _random_array(rng, name, shape) for name, shape in param_shapes(network).items()}


def check_params(network: dict[str, Any], params: Params) -> None:
    """ValueError naming the first entry `params` lacks, has extra or shapes differently from the state dict."""
    expected = param_shapes(network)
    for name, shape in expected.items():
        if name not in params:
            raise ValueError(f"params lack {name} (shape {shape})")
        if tuple(np.shape(params[name])) != shape:
            raise ValueError(f"params {name}: shape {tuple(np.shape(params[name]))}, the network needs {shape}")
    extra = sorted(set(params) - set(expected))
    if extra:
        raise ValueError(f"params hold {extra[0]}, which the network does not have")


def fold_batch_norms(params: Params) -> dict[str, np.ndarray]:
    """The inference weights: every ConvBNAct's `P.0.weight` and BatchNorm `P.1.*` become `P.weight` and
    `P.bias` (the BatchNorm folded in, in float64 then float32); other entries are kept, batch counters dropped."""
    folded: dict[str, np.ndarray] = {}
    norms = [name[:-len(".1.running_var")] for name in params if name.endswith(".1.running_var")]
    taken = {f"{p}.{part}" for p in norms for part in ("0.weight", "1.weight", "1.bias", "1.running_mean",
                                                        "1.running_var", "1.num_batches_tracked")}
    for p in norms:
        scale = np.asarray(params[f"{p}.1.weight"], np.float64) / np.sqrt(
            np.asarray(params[f"{p}.1.running_var"], np.float64) + NORM_EPS)
        weight = np.asarray(params[f"{p}.0.weight"], np.float64) * scale[:, None, None, None]
        bias = np.asarray(params[f"{p}.1.bias"], np.float64) - np.asarray(params[f"{p}.1.running_mean"]) * scale
        folded[f"{p}.weight"], folded[f"{p}.bias"] = weight.astype(np.float32), bias.astype(np.float32)
    for name, value in params.items():
        if name not in taken and not name.endswith("num_batches_tracked"):
            folded[name] = np.asarray(value, np.float32)
    return folded


def forward(network: dict[str, Any]) -> Callable[[Params, Array], Array]:
    """fn(inference weights (`fold_batch_norms`), images B x C x H x W) -> logits: the network in jax."""
    version = _check_description(network)

    def fn(w: Params, images: Array) -> Array:
        if images.shape[-1] != network["resolution"] or images.shape[-2] != network["resolution"]:
            raise ValueError(f"images of side {images.shape[-1]}, the network takes {network['resolution']}")
        stem = network["stem"]
        x = conv_act(images, w["stem.weight"], w["stem.bias"], stem["stride"])
        side, cin = conv_out(network["resolution"], stem["stride"]), stem["channels"]
        for i, stage in enumerate(network["stages"]):
            cout = stage["channels"]
            if stage["type"] == "conv":
                for j, layer in enumerate(stage["layers"]):
                    stride = stage["stride"] if j == 0 else 1
                    x = mbconv(x, w, f"stages.{i}.{j}.", cin, cout, stride, stage["se"],
                               **_conv_options(stage, layer["expand"], version))
                    cin = cout
                side = conv_out(side, stage["stride"]) if stage["layers"] else side
                continue
            se = stage.get("downsample_se", False) if version > 1 else False
            x = mbconv(x, w, f"stages.{i}.downsample.", cin, cout, stage["stride"], se,
                       **_conv_options(stage, stage["downsample_expand"], version))
            side, cin = conv_out(side, stage["stride"]), cout
            batch, channels, height, width = x.shape
            tokens = x.reshape(batch, channels, height * width).transpose(0, 2, 1)
            options = _attention_options(stage, version)
            for j, layer in enumerate(stage["layers"]):
                prefix = f"stages.{i}.layers.{j}."
                tokens = attention(tokens, w, prefix + "0.", stage["head_dim"], side, layer_kinds(layer), options)
                tokens = feed_forward(tokens, w, prefix + "1.", layer.get("act", "hswish"))
            x = tokens.transpose(0, 2, 1).reshape(batch, channels, height, width)
        final = bool(network["head"].get("final", 0)) if version > 1 else False
        return head(x, w, "head.", final)

    return fn


def network_function(network: dict[str, Any], params: Params) -> Callable[[Array], Array]:
    """fn(images) -> logits with `params` (a state dict) folded and fixed: plaintext use. For SPU, where the
    weights must be secret arguments, use `forward(network)` with `fold_batch_norms(params)`."""
    check_params(network, params)
    weights = {name: jnp.asarray(value) for name, value in fold_batch_norms(params).items()}
    fn = forward(network)
    return lambda images: fn(weights, images)


# ---- pieces ------------------------------------------------------------------------------------------
def _normal(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _block_function(block: Block, rng: np.random.Generator) -> tuple[Callable[..., Array], tuple[Any, ...]]:
    """A whole conv block in inference form, with random folded weights and input."""
    x = _normal(rng, 1, block.cin, block.hw, block.hw)
    if block.kind == "stem":
        shapes = _conv_bn_shapes("stem", block.cin, block.cout, block.kernel)

        def fn(w: Params, x: Array) -> Array:
            return conv_act(x, w["stem.weight"], w["stem.bias"], block.stride)
    elif block.kind in ("mbconv", "transds"):
        shapes = _mbconv_shapes("", block.cin, block.cout, block.expand, block.kernel, block.stride, block.se,
                                block.shortcut, block.expand_conv)

        def fn(w: Params, x: Array) -> Array:
            return mbconv(x, w, "", block.cin, block.cout, block.stride, block.se, block.shortcut, block.expand_conv)
    elif block.kind == "head":
        shapes = _conv_bn_shapes("expand", block.cin, block.cout, 1)
        if block.final:
            shapes.update({"final.weight": (block.final, block.cout), "final.bias": (block.final,)})
        shapes.update({"classifier.weight": (block.num_classes, block.final or block.cout),
                       "classifier.bias": (block.num_classes,)})

        def fn(w: Params, x: Array) -> Array:
            return head(x, w, "", bool(block.final))
    else:
        raise ValueError(f"a {block.kind} block is measured by its pieces, not whole")
    params = {name: _random_array(rng, name, shape) for name, shape in shapes.items()}
    return fn, (fold_batch_norms(params), x)


def piece_function(piece: Piece, seed: int = 0) -> tuple[Callable[..., Array], tuple[Any, ...]]:
    """(fn, example_args) of a piece: fn(*example_args) runs it; every argument (activations and weights) is
    secret under SPU. Token pieces take a batch of 1 (1 x N x C), like the network."""
    rng = np.random.default_rng(seed)
    if piece.kind == "block":
        return _block_function(piece.as_block(), rng)
    n = piece.tokens
    if piece.kind == "layernorm":
        c = piece.channels
        return layer_norm, (_normal(rng, 1, n, c), 1 + _normal(rng, c, scale=0.1), _normal(rng, c, scale=0.1))
    if piece.kind == "linear":
        weight = _normal(rng, piece.cout, piece.cin, scale=piece.cin**-0.5)
        x = _normal(rng, 1, n, piece.cin)
        if piece.bias:
            return linear, (x, weight, _normal(rng, piece.cout, scale=0.1))
        return (lambda x, weight: linear(x, weight, None)), (x, weight)
    if piece.kind == "act":
        return ACTIVATIONS[piece.name], (_normal(rng, 1, n, piece.channels),)
    if piece.kind == "dwconv":
        side, c = piece.side, piece.channels

        def dwconv(x: Array, weight: Array) -> Array:
            return depthwise_tokens(x, weight, side)
        return dwconv, (_normal(rng, 1, side * side, c), _normal(rng, c, 1, 3, 3, scale=1 / 3))
    if piece.kind == "attn_core":
        kind, h = piece.name, piece.heads
        normaliser(kind)  # ValueError for a kind without a jax version
        q, k = _normal(rng, 1, h, n, piece.head_dim), _normal(rng, 1, h, n, piece.head_dim)
        v = _normal(rng, 1, h, n, piece.v_dim)
        if not piece.rel_bias:
            return (lambda q, k, v: attn_core(q, k, v, kind)), (q, k, v)
        side = math.isqrt(n)

        def core(q: Array, k: Array, v: Array, table: Array) -> Array:
            return attn_core(q, k, v, kind, relative_bias(table, side))
        return core, (q, k, v, _normal(rng, (2 * side - 1) ** 2, h, scale=0.02))
    raise ValueError(f"unknown piece kind {piece.kind!r}")
