"""Config YAML is read safely and within bounds; whatever is refused is one ConfigError naming
the file (or --set value), the line and column, and why."""

from __future__ import annotations

import pytest

from distnn.config import (
    ConfigError,
    apply_overrides,
    check_world_size,
    from_dict,
    load_config,
    loading,
    parse_yaml,
)
from tests.test_bad_input import alias_bomb


def test_alias_bomb_is_refused_by_the_node_limit_without_expanding_it(monkeypatch):
    """9**12 nodes once expanded: the refusal names the node limit, the size check visits each
    node of the document once (aliases memoised, never expanded) and no Python object is
    built. Counted, not timed: the work stays proportional to the ~400 bytes of text."""
    visits, built = [0], [0]
    expanded_size, construct = loading._expanded_size, loading.BoundedLoader.construct_object

    def counting_size(node, sizes):
        visits[0] += 1
        return expanded_size(node, sizes)

    def counting_construct(self, node, deep=False):
        built[0] += 1
        return construct(self, node, deep)

    monkeypatch.setattr(loading, "_expanded_size", counting_size)
    monkeypatch.setattr(loading.BoundedLoader, "construct_object", counting_construct)
    text = alias_bomb(levels=12)
    with pytest.raises(ConfigError, match=f"c.yaml: line 1: YAML aliases expand to more than "
                                          f"{loading.MAX_NODES} nodes"):
        parse_yaml(text, "c.yaml")
    # 12 lists of 9 entries (anchors and aliases), the `seed` key and its list, the root mapping.
    assert 0 < visits[0] <= 12 * 10 + 3 < len(text) < loading.MAX_NODES, visits[0]
    assert built[0] == 0


def test_aliases_within_the_budget_still_work():
    data = parse_yaml("a: &x {units: 3}\nb: [*x, *x]\n", "c.yaml")
    assert data["b"] == [{"units": 3}, {"units": 3}]


@pytest.mark.parametrize("text,match", [
    ("a: &x [1, *x]\n", r"line 1: a YAML alias refers to a node that contains it"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", r"YAML nested too deeply"),
    (b"a: \xff\xfe\x00\x00bad", r"byte \d+: not UTF-8 or UTF-16 text"),
    ("a: !!python/name:os.system\n", r"line 1, column 4: invalid YAML: could not determine a "
                                     r"constructor .*; expected plain YAML data"),
    ("a: 1\n---\nb: 2\n", r"line 2, column 1: invalid YAML: expected a single document"),
])
def test_unsafe_or_broken_yaml(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_yaml(text, "c.yaml")


def test_config_paths_that_are_not_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match=r"config .*: cannot read: Is a directory"):
        load_config(str(tmp_path))
    (tmp_path / "big.yaml").write_bytes(b"#" * ((1 << 20) + 1))
    with pytest.raises(ConfigError, match=r"big.yaml: 1048577 bytes, expected a YAML "
                                          r"file of at most 1048576 bytes"):
        load_config(str(tmp_path / "big.yaml"))


def test_overrides_on_a_config_that_is_not_a_mapping(tmp_path):
    (tmp_path / "c.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match=r"config: \[1\] is not a mapping"):
        load_config(str(tmp_path / "c.yaml"), ["train.epochs=2"])
    with pytest.raises(ConfigError, match=r"config: 3 is not a mapping"):
        apply_overrides(3, [])  # type: ignore[arg-type]


def test_model_specs_are_checked_when_the_config_loads():
    with pytest.raises(ConfigError, match=r"model: conv0: filters=-1, expected an integer >= 1"):
        from_dict({"model": [{"type": "conv", "filters": -1}]})
    assert from_dict({}).model == ()  # no model: refused by load_config, which needs one


def test_global_batch_must_split_over_the_ranks_in_the_plain_step():
    cfg = from_dict({"train": {"global_batch": 64}})
    check_world_size(cfg, 4)
    with pytest.raises(ConfigError, match=r"train.global_batch: 64 does not split evenly over 3 "
                                          r"ranks; expected a multiple of 3 \(e.g. 63 or 66\)"):
        check_world_size(cfg, 3)
    with pytest.raises(ConfigError, match=r"expected a multiple of 128 \(e.g. 128\)"):
        check_world_size(cfg, 128)
