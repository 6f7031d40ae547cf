from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys

import pytest
import yaml

from nas.space import ArchConfig, SearchSpace
from nas.spec import parse_spec


def _space(path) -> SearchSpace:
    spec = parse_spec(yaml.safe_load(path.read_text()), str(path))
    return SearchSpace.from_spec(spec, in_channels=1, num_classes=10)


def test_pure_python_without_torch() -> None:
    # The space (and the spec) must not import torch: search engines and `nas validate` stay light.
    code = "import sys, nas.space, nas.spec; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_seeded_sampling_is_reproducible(tiny_spec_path) -> None:
    space = _space(tiny_spec_path)
    first = [space.sample(random.Random(7)) for _ in range(3)]
    again = [space.sample(random.Random(7)) for _ in range(3)]
    assert first == again
    many = {space.sample(random.Random(i)).arch_hash() for i in range(50)}
    assert len(many) > 30


def test_encode_decode_and_dict_round_trip(tiny_spec_path) -> None:
    space = _space(tiny_spec_path)
    rng = random.Random(0)
    dims = space.dimensions()
    for _ in range(200):
        arch = space.sample(rng)
        vector = space.encode(arch)
        assert len(vector) == len(dims)
        assert all(0 <= v < len(choices) for v, (_, choices) in zip(vector, dims, strict=True))
        assert space.decode(vector) == arch
        assert ArchConfig.from_dict(json.loads(arch.canonical_json())) == arch
        space.validate_arch(arch)


def test_hash_is_stable_and_canonical(tiny_spec_path) -> None:
    space = _space(tiny_spec_path)
    arch = space.largest()
    data = arch.to_dict()
    shuffled = {k: data[k] for k in reversed(list(data))}
    assert ArchConfig.from_dict(shuffled).arch_hash() == arch.arch_hash()
    assert arch.arch_hash() != space.smallest().arch_hash()


def test_count_matches_enumeration(tiny_spec_path) -> None:
    space = _space(tiny_spec_path)
    seen = set()
    dims = space.dimensions()
    for vector in itertools.product(*[range(len(c)) for _, c in dims]):
        seen.add(space.decode(list(vector)).arch_hash())
    assert len(seen) == space.count()


def test_archs_outside_the_space_are_rejected(tiny_spec_path) -> None:
    space = _space(tiny_spec_path)
    data = space.largest().to_dict()
    data["stages"][0]["channels"] = 999
    with pytest.raises(ValueError, match=r"stages\[0\].channels 999"):
        space.validate_arch(ArchConfig.from_dict(data))


def test_every_arch_decomposes_into_the_space_blocks(tiny_spec_path) -> None:
    space = _space(tiny_spec_path)
    distinct = set(space.distinct_blocks())
    rng = random.Random(1)
    for _ in range(500):
        blocks = space.blocks(space.sample(rng))
        assert set(blocks) <= distinct
        assert blocks[0].kind == "stem" and blocks[-1].kind == "head"


def test_largest_has_most_params_and_flops(tiny_spec_path) -> None:
    space = _space(tiny_spec_path)
    rng = random.Random(2)
    big, small = space.largest(), space.smallest()
    for _ in range(100):
        arch = space.sample(rng)
        assert space.params(small) <= space.params(arch) <= space.params(big)
        assert space.flops(small) <= space.flops(arch) <= space.flops(big)
