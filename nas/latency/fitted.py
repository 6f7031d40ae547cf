"""A compact latency model fitted to measured per-block latencies (nn-Meter's key format).

Why fitted: third-party measurements may be read, fitted and tested against, but not shipped. What ships is a
handful of coefficients per block kind plus the held-out error of the fit.

The model of one block kind is two small stages:

    latency_ms = (w . f(block)) * exp(clip(g . poly2(clip(z(block)))))

* `f` are analytic cost terms of the block's sub-operations (multiply-accumulates of each convolution or
  matmul, elementwise work, activation and weight sizes), in millions. `w >= 0` is fitted by non-negative
  least squares on *relative* error, so every term keeps a physical meaning (ms per million ops) and the
  model extrapolates like a cost model, not like a polynomial.
* `z` are a few log-shape and 0/1 descriptors (log hw, log channels, stride 2, odd feature-map side, ...);
  `g` is a ridge fit of a degree-2 polynomial in `z` to the log residual of the first stage. It captures
  what cost terms miss: kernel efficiency by shape, SIMD tails on odd sizes, cache effects. `z` is clipped to
  the range seen in training and the log correction to the range it took in training, so the correction is
  bounded outside the data.

Prediction is pure Python arithmetic (no numpy, no scikit-learn): a few microseconds per block.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from nas.blocks import BLOCK_KINDS, Block
from nas.errors import LatencyError

MODEL_FORMAT_VERSION = 1
_M = 1e-6  # cost terms are in millions (of MACs / elements)

# ----------------------------------------------------------------------------------------------------------
# nn-Meter keys
# ----------------------------------------------------------------------------------------------------------

_INT = r"([1-9][0-9]*)"
_KEY_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "firstconv": (re.compile(rf"firstconv_{_INT}_{_INT}_{_INT}_{_INT}_{_INT}"),
                  "firstconv_{res}_{cin}_{cout}_{stride}_{kernel}"),
    "conv": (re.compile(rf"conv_{_INT}_{_INT}_{_INT}_{_INT}_{_INT}_hard_swish_{_INT}_(se|nose)"),
             "conv_{hw}_{cin}_{cout}_{expand}_{stride}_hard_swish_{kernel}_{se|nose}"),
    "transds": (re.compile(rf"transds_{_INT}_{_INT}_{_INT}_{_INT}_{_INT}"),
                "transds_{hw}_{cin}_{cout}_{stride}_{expand}"),
    "transattn": (re.compile(rf"transattn_{_INT}_{_INT}_hard_swish_{_INT}_ln"),
                  "transattn_{hw}_{c}_hard_swish_{v_scale}_ln"),
    "transffn": (re.compile(rf"transffn_{_INT}_{_INT}_{_INT}_hard_swish_ln"),
                 "transffn_{hw}_{c}_{mlp_ratio}_hard_swish_ln"),
    "mbpool": (re.compile(rf"mbpool_{_INT}_{_INT}_{_INT}_{_INT}_hard_swish"),
               "mbpool_{hw}_{cin}_{cout}_{expand}_hard_swish"),
}
NNMETER_HEAD_DIM = 16  # nn-Meter's attention keys carry no head dim: ElasticViT fixes it at 16


def parse_nnmeter_key(key: str) -> Block:
    """The `Block` an nn-Meter hybrid-transformer LUT key describes.

    Only the `hard_swish` + LayerNorm variants of the six ElasticViT block kinds are understood; anything
    else (another activation, BatchNorm, NASViT-prefixed keys, zero or zero-padded numbers) raises
    ValueError naming the key and the expected pattern, rather than being guessed at.
    """
    if not isinstance(key, str):
        raise ValueError(f"an nn-Meter key must be a string, got {type(key).__name__}")
    prefix = key.split("_", 1)[0]
    if prefix not in _KEY_PATTERNS:
        known = ", ".join(template for _, template in _KEY_PATTERNS.values())
        raise ValueError(f"unknown nn-Meter block key {key!r}: the prefix must be one of {known}")
    pattern, template = _KEY_PATTERNS[prefix]
    match = pattern.fullmatch(key)
    if match is None:
        raise ValueError(f"malformed nn-Meter {prefix} key {key!r}: expected {template} "
                         "(positive integers without leading zeros)")
    g = match.groups()
    n = [int(x) for x in g if x not in ("se", "nose")]
    if prefix == "firstconv":
        return Block("stem", hw=n[0], cin=n[1], cout=n[2], stride=n[3], kernel=n[4])
    if prefix == "conv":
        return Block("mbconv", hw=n[0], cin=n[1], cout=n[2], expand=n[3], stride=n[4], kernel=n[5],
                     se=g[-1] == "se")
    if prefix == "transds":
        return Block("transds", hw=n[0], cin=n[1], cout=n[2], stride=n[3], expand=n[4])
    if prefix == "transattn":
        return Block("attn", hw=n[0], cin=n[1], cout=n[1], v_scale=n[2], head_dim=NNMETER_HEAD_DIM)
    if prefix == "transffn":
        return Block("ffn", hw=n[0], cin=n[1], cout=n[1], mlp_ratio=n[2])
    return Block("head", hw=n[0], cin=n[1], cout=n[2], expand=n[3])


def nnmeter_key(block: Block) -> str:
    """The inverse of `parse_nnmeter_key`; ValueError for a block that key format cannot express."""
    b = block
    defaults = {f.name: f.default for f in fields(Block) if f.name not in ("kind", "hw", "cin", "cout")}
    used = {
        "stem": {"stride", "kernel"},
        "mbconv": {"stride", "kernel", "expand", "se"},
        "transds": {"stride", "expand"},
        "attn": {"v_scale", "head_dim"},
        "ffn": {"mlp_ratio"},
        "head": {"expand"},
    }
    if b.kind not in used:
        raise ValueError(f"block kind must be one of {', '.join(BLOCK_KINDS)}, got {b.kind!r}")
    extra = [name for name, default in defaults.items()
             if name not in used[b.kind] and getattr(b, name) != default]
    if extra:
        raise ValueError(f"an nn-Meter {b.kind} key cannot express field(s) {', '.join(extra)} of {b}")
    if b.kind in ("attn", "ffn") and b.cin != b.cout:
        raise ValueError(f"an nn-Meter {b.kind} key needs cin == cout, got {b}")
    if b.kind == "attn" and b.head_dim != NNMETER_HEAD_DIM:
        raise ValueError(f"nn-Meter attention keys are for head_dim {NNMETER_HEAD_DIM}, got {b.head_dim}")
    if b.kind == "stem":
        key = f"firstconv_{b.hw}_{b.cin}_{b.cout}_{b.stride}_{b.kernel}"
    elif b.kind == "mbconv":
        key = (f"conv_{b.hw}_{b.cin}_{b.cout}_{b.expand}_{b.stride}_hard_swish_{b.kernel}_"
               f"{'se' if b.se else 'nose'}")
    elif b.kind == "transds":
        key = f"transds_{b.hw}_{b.cin}_{b.cout}_{b.stride}_{b.expand}"
    elif b.kind == "attn":
        key = f"transattn_{b.hw}_{b.cin}_hard_swish_{b.v_scale}_ln"
    elif b.kind == "ffn":
        key = f"transffn_{b.hw}_{b.cin}_{b.mlp_ratio}_hard_swish_ln"
    else:
        key = f"mbpool_{b.hw}_{b.cin}_{b.cout}_{b.expand}_hard_swish"
    parse_nnmeter_key(key)  # every emitted key must parse back (catches zeros, negatives)
    return key


def load_nnmeter_json(path: str | Path, strict: bool = True) -> dict[Block, float]:
    """Read an nn-Meter LUT JSON file (key -> ms) from a path the user gives.

    strict: an unknown or malformed key is an error (LatencyError naming it); otherwise such keys are
    skipped. A latency that is not a positive finite number is always an error.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise LatencyError(f"{path}: nn-Meter latency file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LatencyError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(raw, dict):
        raise LatencyError(f"{path}: an nn-Meter LUT must be a JSON object of key -> milliseconds")
    entries: dict[Block, float] = {}
    for key, value in raw.items():
        try:
            block = parse_nnmeter_key(key)
        except ValueError as exc:
            if strict:
                raise LatencyError(f"{path}: {exc}") from None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value <= 0:
            raise LatencyError(f"{path}: {key}: latency must be a positive number of ms, got {value!r}")
        entries[block] = float(value)
    return entries


# ----------------------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------------------

_CONV_TERMS = ("const", "pw_macs", "dw_macs", "pwl_macs", "act_elems", "se_elems", "se_fc_macs", "io_elems",
               "shortcut_macs")
FEATURE_NAMES: dict[str, tuple[str, ...]] = {
    "stem": ("const", "conv_macs", "io_elems"),
    "mbconv": _CONV_TERMS,
    "transds": _CONV_TERMS,
    "attn": ("const", "qkv_macs", "proj_macs", "qk_macs", "av_macs", "score_elems", "dw_v_macs", "act_elems",
             "weight_elems", "score_tokens_kelems"),
    "ffn": ("const", "fc_macs", "act_elems", "ln_elems", "weight_elems"),
    "head": ("const", "pw_macs", "fc_macs", "act_elems"),
}
# (continuous log-shape terms, 0/1 terms) of the multiplicative correction, and its polynomial degree.
SHAPE_TERMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "stem": (("log_hw", "log_cout"), ()),
    "mbconv": (("log_hw", "log_cin", "log_cout", "log_expand"),
               ("stride2", "kernel5", "se", "odd_hw", "same_channels")),
    "transds": (("log_hw", "log_cin", "log_cout", "log_expand"), ("stride2", "odd_hw", "same_channels")),
    "attn": (("log_hw", "log_c", "log_v_scale"), ("odd_hw",)),
    "ffn": (("log_hw", "log_c", "log_mlp_ratio"), ("odd_hw",)),
    "head": (("log_hw", "log_cin"), ()),
}
CORRECTION_DEGREE = {"stem": 0, "mbconv": 2, "transds": 2, "attn": 2, "ffn": 2, "head": 0}
RIDGE_LAMBDA = 0.1
RANGE_FIELDS = ("hw", "cin", "cout", "stride", "kernel", "expand", "se", "mlp_ratio", "v_scale", "head_dim",
                "num_classes")


def _require(block: Block, names: Iterable[str]) -> None:
    bad = [n for n in names if getattr(block, n) <= 0]
    if bad:
        raise ValueError(f"a {block.kind} block needs positive {', '.join(bad)}, got {block}")


def _conv_terms(hw: int, cin: int, cout: int, stride: int, kernel: int, expand: int, se: bool) -> list[float]:
    """Inverted residual: [1x1 expand] -> kxk depthwise (stride) -> [squeeze-excite] -> 1x1 project."""
    ho = -(-hw // stride)  # TFLite "same" padding
    pre, post = hw * hw, ho * ho
    inner = cin * expand
    expanded = expand > 1  # expand 1 (ElasticViT's first block) has no 1x1 expansion
    return [
        1.0,
        pre * cin * inner * _M if expanded else 0.0,
        post * inner * kernel * kernel * _M,
        post * inner * cout * _M,
        ((pre * inner if expanded else 0) + post * inner) * _M,
        post * inner * _M if se else 0.0,
        inner * inner / 2 * _M if se else 0.0,
        (pre * cin + post * cout) * _M,
        post * cin * cout * _M if (cin != cout or stride != 1) else 0.0,
    ]


def _features_list(b: Block) -> list[float]:
    """The cost terms of `FEATURE_NAMES[b.kind]` as plain floats (the fast path of `predict`)."""
    if b.kind == "stem":
        _require(b, ("hw", "cin", "cout", "stride", "kernel"))
        ho = -(-b.hw // b.stride)
        return [1.0, ho * ho * b.kernel * b.kernel * b.cin * b.cout * _M,
                (b.hw * b.hw * b.cin + ho * ho * b.cout) * _M]
    if b.kind == "mbconv":
        _require(b, ("hw", "cin", "cout", "stride", "kernel", "expand"))
        return _conv_terms(b.hw, b.cin, b.cout, b.stride, b.kernel, b.expand, b.se)
    if b.kind == "transds":
        # ElasticViT's stage-opening downsample: an MBConv with a 3x3 depthwise and squeeze-excite.
        _require(b, ("hw", "cin", "cout", "stride", "expand"))
        return _conv_terms(b.hw, b.cin, b.cout, b.stride, 3, b.expand, True)
    if b.kind == "attn":
        _require(b, ("hw", "cin", "v_scale", "head_dim"))
        if b.cin < b.head_dim:
            raise ValueError(f"attention width {b.cin} is below head_dim {b.head_dim}: {b}")
        n, c = b.hw * b.hw, b.cin
        heads = c // b.head_dim  # nn-Meter/ElasticViT: heads = c // 16, so q/k width is heads * 16
        qk = heads * b.head_dim
        vd = b.v_scale * qk
        return [1.0, n * c * (2 * qk + vd) * _M, n * vd * c * _M, n * n * qk * _M, n * n * vd * _M,
                n * n * heads * _M, n * vd * 9 * _M, (n * c + n * vd) * _M, (2 * qk + 2 * vd) * c * _M,
                n * n * heads * n * 1e-3 * _M]
    if b.kind == "ffn":
        _require(b, ("hw", "cin", "mlp_ratio"))
        n, c, r = b.hw * b.hw, b.cin, b.mlp_ratio
        return [1.0, 2 * n * r * c * c * _M, n * r * c * _M, n * c * _M, 2 * r * c * c * _M]
    if b.kind == "head":
        # 1x1 expand to cin * expand, pool, linear to cout (1984); the classifier of the measured head is
        # constant across the table and lands in `const`.
        _require(b, ("hw", "cin", "cout", "expand"))
        n, inner = b.hw * b.hw, b.cin * b.expand
        return [1.0, n * b.cin * inner * _M, inner * b.cout * _M, n * inner * _M]
    raise ValueError(f"block kind must be one of {', '.join(BLOCK_KINDS)}, got {b.kind!r}")


def block_features(block: Block) -> np.ndarray:
    """Analytic cost terms of `block`, named by `FEATURE_NAMES[block.kind]` (MACs, elements: millions)."""
    return np.asarray(_features_list(block), dtype=float)


def _shape_list(b: Block) -> tuple[list[float], list[float]]:
    """(continuous, binary) descriptors of `SHAPE_TERMS[b.kind]`."""
    odd = float(b.hw % 2 == 1)
    if b.kind == "stem":
        return [math.log(b.hw), math.log(b.cout)], []
    if b.kind == "mbconv":
        return ([math.log(b.hw), math.log(b.cin), math.log(b.cout), math.log(b.expand)],
                [float(b.stride > 1), float(b.kernel > 3), float(b.se), odd, float(b.cin == b.cout)])
    if b.kind == "transds":
        return ([math.log(b.hw), math.log(b.cin), math.log(b.cout), math.log(b.expand)],
                [float(b.stride > 1), odd, float(b.cin == b.cout)])
    if b.kind == "attn":
        return [math.log(b.hw), math.log(b.cin), math.log(b.v_scale)], [odd]
    if b.kind == "ffn":
        return [math.log(b.hw), math.log(b.cin), math.log(b.mlp_ratio)], [odd]
    return [math.log(b.hw), math.log(b.cin)], []


def _poly(cont: list[float], binary: list[float], degree: int) -> list[float]:
    """1, all terms, then all pairwise products (squares of 0/1 terms are left out: they equal the term)."""
    z = cont + binary
    out = [1.0] + z
    if degree >= 2:
        nc = len(cont)
        for i in range(len(z)):
            for j in range(i, len(z)):
                if i == j and i >= nc:
                    continue
                out.append(z[i] * z[j])
    return out


# ----------------------------------------------------------------------------------------------------------
# Fitting helpers
# ----------------------------------------------------------------------------------------------------------


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Non-negative least squares, min ||a x - b|| s.t. x >= 0 (Lawson-Hanson active set).

    In numpy so fitting needs no scipy; columns are scaled to unit norm for conditioning.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    m, n = a.shape
    norms = np.linalg.norm(a, axis=0)
    norms[norms == 0] = 1.0
    a = a / norms
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = 10 * np.finfo(float).eps * max(m, n) * max(1.0, np.abs(a).sum(axis=0).max())
    grad = a.T @ (b - a @ x)
    outer = 0
    max_iter = max_iter or 30 * n
    while (~passive).any() and np.max(np.where(passive, -np.inf, grad)) > tol and outer < max_iter:
        outer += 1
        passive[int(np.argmax(np.where(passive, -np.inf, grad)))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if np.all(z[passive] > tol):
                break
            blocking = passive & (z <= tol)
            alpha = np.min(x[blocking] / (x[blocking] - z[blocking]))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
        x = z
        grad = a.T @ (b - a @ x)
    return x / norms


def _error_stats(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    err = np.abs(predicted / measured - 1.0)
    if err.size == 0:
        return {"n": 0}
    return {
        "n": int(err.size),
        "within_10pct": float(np.mean(err <= 0.10)),
        "within_5pct": float(np.mean(err <= 0.05)),
        "mean_abs_pct_err": float(100 * np.mean(err)),
        "p95_abs_pct_err": float(100 * np.percentile(err, 95)),
        "max_abs_pct_err": float(100 * np.max(err)),
    }


def _by_kind(entries: Mapping[Block, float]) -> dict[str, list[Block]]:
    groups: dict[str, list[Block]] = {}
    for block in sorted(entries):
        groups.setdefault(block.kind, []).append(block)
    return groups


def split_entries(entries: Mapping[Block, float], seed: int = 0,
                  train_fraction: float = 0.8) -> tuple[dict[Block, float], dict[Block, float]]:
    """A random split stratified by kind: per kind (in `BLOCK_KINDS` order) the sorted blocks are shuffled
    with one `random.Random(seed)` and the first round(train_fraction * n) go to training (at least one
    each side when a kind has two or more blocks)."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction}")
    rng = random.Random(seed)
    groups = _by_kind(entries)
    train: dict[Block, float] = {}
    test: dict[Block, float] = {}
    for kind in [k for k in BLOCK_KINDS if k in groups]:
        blocks = groups[kind]
        rng.shuffle(blocks)
        n_train = round(train_fraction * len(blocks))
        if len(blocks) >= 2:
            n_train = min(max(n_train, 1), len(blocks) - 1)
        for i, block in enumerate(blocks):
            (train if i < n_train else test)[block] = entries[block]
    return train, test


# ----------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------


@dataclass
class KindModel:
    """The fitted model of one block kind; every field is JSON-ready."""

    kind: str
    feature_names: list[str]
    weights: list[float]
    degree: int
    shape_terms: list[str]
    n_continuous: int
    corr_coef: list[float] = field(default_factory=list)
    corr_center: list[float] = field(default_factory=list)
    corr_scale: list[float] = field(default_factory=list)
    z_min: list[float] = field(default_factory=list)
    z_max: list[float] = field(default_factory=list)
    log_corr_min: float = 0.0
    log_corr_max: float = 0.0
    feature_min: list[float] = field(default_factory=list)
    feature_max: list[float] = field(default_factory=list)
    field_min: dict[str, int] = field(default_factory=dict)
    field_max: dict[str, int] = field(default_factory=dict)
    n_train: int = 0

    def base(self, feats: list[float]) -> float:
        return sum(w * f for w, f in zip(self.weights, feats, strict=True))

    def log_correction(self, block: Block) -> float:
        if self.degree == 0:
            return 0.0
        cont, binary = _shape_list(block)
        cont = [min(max(v, lo), hi) for v, lo, hi in zip(cont, self.z_min, self.z_max, strict=True)]
        terms = _poly(cont, binary, self.degree)
        value = sum(g * (t - c) / s for g, t, c, s in
                    zip(self.corr_coef, terms, self.corr_center, self.corr_scale, strict=True))
        return min(max(value, self.log_corr_min), self.log_corr_max)

    def in_range(self, block: Block, feats: list[float]) -> bool:
        for name, lo in self.field_min.items():
            value = int(getattr(block, name))
            if value < lo or value > self.field_max[name]:
                return False
        for value, lo, hi in zip(feats[1:], self.feature_min, self.feature_max, strict=True):
            if value < lo * (1 - 1e-9) or value > hi * (1 + 1e-9):
                return False
        return True


def _fit_kind(kind: str, blocks: list[Block], y: np.ndarray) -> KindModel:
    feats = np.array([_features_list(b) for b in blocks])
    weights = nnls(feats / y[:, None], np.ones(len(y)))
    base = np.maximum(feats @ weights, 1e-12)
    cont_names, bin_names = SHAPE_TERMS[kind]
    degree = CORRECTION_DEGREE[kind]
    model = KindModel(
        kind=kind, feature_names=list(FEATURE_NAMES[kind]), weights=[float(w) for w in weights],
        degree=degree, shape_terms=list(cont_names + bin_names), n_continuous=len(cont_names),
        feature_min=[float(v) for v in feats[:, 1:].min(axis=0)],
        feature_max=[float(v) for v in feats[:, 1:].max(axis=0)],
        field_min={n: int(min(getattr(b, n) for b in blocks)) for n in RANGE_FIELDS},
        field_max={n: int(max(getattr(b, n) for b in blocks)) for n in RANGE_FIELDS},
        n_train=len(blocks),
    )
    if degree > 0 and len(blocks) > 1:
        shapes = [_shape_list(b) for b in blocks]
        conts = np.array([c for c, _ in shapes])
        model.z_min = [float(v) for v in conts.min(axis=0)]
        model.z_max = [float(v) for v in conts.max(axis=0)]
        terms = np.array([_poly(c, bb, degree) for c, bb in shapes])
        center = terms.mean(axis=0)
        scale = terms.std(axis=0)
        center[0], scale[0] = 0.0, 1.0  # keep the intercept as is
        scale[scale == 0] = 1.0
        xs = (terms - center) / scale
        residual = np.log(y / base)
        penalty = RIDGE_LAMBDA * np.eye(xs.shape[1])
        penalty[0, 0] = 0.0
        coef = np.linalg.solve(xs.T @ xs + penalty, xs.T @ residual)
        fitted = xs @ coef
        model.corr_coef = [float(v) for v in coef]
        model.corr_center = [float(v) for v in center]
        model.corr_scale = [float(v) for v in scale]
        model.log_corr_min, model.log_corr_max = float(fitted.min()), float(fitted.max())
    else:
        model.degree = 0
    return model


class FittedLatencyModel:
    """Per block kind, a small cost model with a bounded shape correction (see the module docstring).

    Lifecycle: `FittedLatencyModel().fit(entries)` or `FittedLatencyModel.from_dict(d)`, then `predict`.
    """

    def __init__(self, kinds: Mapping[str, KindModel] | None = None, seed: int | None = None) -> None:
        self.kinds: dict[str, KindModel] = dict(kinds or {})
        self.seed = seed

    def fit(self, entries: Mapping[Block, float], seed: int = 0) -> FittedLatencyModel:
        """Fit every kind present in `entries` (block -> measured ms). Deterministic; `seed` is recorded."""
        if not entries:
            raise ValueError("cannot fit a latency model to no entries")
        bad = [b for b, v in entries.items() if not (math.isfinite(v) and v > 0)]
        if bad:
            raise ValueError(f"latencies must be positive ms, got {entries[bad[0]]!r} for {bad[0]}")
        self.kinds = {}
        for kind, blocks in _by_kind(entries).items():
            if kind not in FEATURE_NAMES:
                raise ValueError(f"block kind must be one of {', '.join(BLOCK_KINDS)}, got {kind!r}")
            y = np.array([entries[b] for b in blocks], dtype=float)
            self.kinds[kind] = _fit_kind(kind, blocks, y)
        self.seed = seed
        return self

    def predict(self, block: Block) -> tuple[float, bool]:
        """(latency in ms, in_range): in_range is False when a field or cost term of `block` lies outside
        what its kind was fitted on, i.e. the number is an extrapolation."""
        model = self.kinds.get(block.kind)
        if model is None:
            raise ValueError(f"no fitted latency model for block kind {block.kind!r}; "
                             f"fitted kinds: {', '.join(self.kinds) or 'none'}")
        feats = _features_list(block)
        ms = max(model.base(feats), 0.0) * math.exp(model.log_correction(block))
        return ms, model.in_range(block, feats)

    def predict_sum(self, blocks: Iterable[Block]) -> tuple[float, bool]:
        """A network's latency as the sum of its blocks, and whether every block was in range."""
        total, ok = 0.0, True
        for block in blocks:
            ms, in_range = self.predict(block)
            total += ms
            ok = ok and in_range
        return total, ok

    def evaluate(self, entries: Mapping[Block, float]) -> dict[str, Any]:
        """Error of the model on `entries`: per kind and overall, share within +-10% / +-5%, mean/p95/max
        absolute percent error, and how many blocks were out of range."""
        groups = _by_kind(entries)
        per_kind: dict[str, dict[str, float]] = {}
        all_pred: list[float] = []
        all_meas: list[float] = []
        for kind in [k for k in BLOCK_KINDS if k in groups] + sorted(set(groups) - set(BLOCK_KINDS)):
            preds = [self.predict(b) for b in groups[kind]]
            pred = np.array([p for p, _ in preds])
            meas = np.array([entries[b] for b in groups[kind]])
            per_kind[kind] = _error_stats(pred, meas)
            per_kind[kind]["out_of_range"] = int(sum(not ok for _, ok in preds))
            all_pred.extend(pred)
            all_meas.extend(meas)
        overall = _error_stats(np.array(all_pred), np.array(all_meas))
        return {"per_kind": per_kind, "overall": overall}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready coefficients (no measured data)."""
        return {
            "format_version": MODEL_FORMAT_VERSION,
            "form": "ms = (w . f) * exp(clip(g . (poly2(clip(z)) - center) / scale))",
            "seed": self.seed,
            "kinds": {kind: asdict(m) for kind, m in self.kinds.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FittedLatencyModel:
        """Rebuild from `to_dict()` output; ValueError naming the problem when it does not fit this code."""
        if not isinstance(data, Mapping):
            raise ValueError("a fitted latency model must be a JSON object")
        version = data.get("format_version")
        if version != MODEL_FORMAT_VERSION:
            raise ValueError(f"fitted model format_version: this nas reads {MODEL_FORMAT_VERSION}, "
                             f"got {version!r}")
        kinds: dict[str, KindModel] = {}
        for kind, raw in dict(data.get("kinds", {})).items():
            try:
                model = KindModel(**raw)
            except TypeError as exc:
                raise ValueError(f"fitted model kinds.{kind}: {exc}") from None
            if model.kind != kind or kind not in FEATURE_NAMES:
                raise ValueError(f"fitted model kinds.{kind}: unknown or mismatched kind {model.kind!r}")
            names_ok = tuple(model.feature_names) == FEATURE_NAMES[kind]
            if not names_ok or len(model.weights) != len(FEATURE_NAMES[kind]):
                raise ValueError(f"fitted model kinds.{kind}: feature_names {model.feature_names} do not "
                                 f"match this code's {list(FEATURE_NAMES[kind])}; refit the model")
            names = SHAPE_TERMS[kind][0] + SHAPE_TERMS[kind][1]
            if model.degree and tuple(model.shape_terms) != names:
                raise ValueError(f"fitted model kinds.{kind}: shape_terms {model.shape_terms} do not match "
                                 f"this code's {list(names)}; refit the model")
            kinds[kind] = model
        return cls(kinds, seed=data.get("seed"))


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------


def _plain_lstsq_baseline(train: Mapping[Block, float], test: Mapping[Block, float]) -> dict[str, Any]:
    """The naive reference: per kind, ordinary least squares of ms on [1, total MACs, total bytes]."""

    def design(blocks: list[Block]) -> np.ndarray:
        rows = []
        for b in blocks:
            f = _features_list(b)
            names = FEATURE_NAMES[b.kind]
            macs = sum(v for v, n in zip(f, names, strict=True) if n.endswith("_macs"))
            elems = sum(v for v, n in zip(f, names, strict=True) if n.endswith("elems"))
            rows.append([1.0, macs, 4 * elems])
        return np.array(rows)

    train_groups, test_groups = _by_kind(train), _by_kind(test)
    preds: list[float] = []
    meas: list[float] = []
    per_kind = {}
    for kind, blocks in test_groups.items():
        tr = train_groups[kind]
        coef = np.linalg.lstsq(design(tr), np.array([train[b] for b in tr]), rcond=None)[0]
        p = design(blocks) @ coef
        m = np.array([test[b] for b in blocks])
        per_kind[kind] = _error_stats(p, m)["within_10pct"]
        preds.extend(p)
        meas.extend(m)
    return {"per_kind_within_10pct": per_kind,
            "overall_within_10pct": _error_stats(np.array(preds), np.array(meas))["within_10pct"]}


def fit_report(entries: Mapping[Block, float], seed: int = 0, train_fraction: float = 0.8) -> dict[str, Any]:
    """Fit on a random 80% (stratified by kind), report the held-out 20%, then refit on 100%.

    Returns the report: split, held-out stats per kind and overall, the plain least-squares baseline on the
    same split, the in-sample stats of the full fit, `heldout_model` (the 80% fit, so anyone can reproduce
    the held-out figures from the data and the seed) and `model` (the full fit, the coefficients to ship).
    """
    train, test = split_entries(entries, seed, train_fraction)
    split_model = FittedLatencyModel().fit(train, seed)
    full_model = FittedLatencyModel().fit(entries, seed)
    return {
        "seed": seed,
        "train_fraction": train_fraction,
        "split": "per kind: sorted blocks shuffled by random.Random(seed) in BLOCK_KINDS order "
                 "(nas.latency.fitted.split_entries)",
        "n_train": len(train),
        "n_test": len(test),
        "heldout": split_model.evaluate(test),
        "baseline_plain_lstsq_heldout": _plain_lstsq_baseline(train, test),
        "full_fit_in_sample": full_model.evaluate(entries),
        "heldout_model": split_model.to_dict(),
        "model": full_model.to_dict(),
    }
