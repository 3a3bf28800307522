"""Property-based tests of config parsing: whatever the input, either a valid Config or a
ConfigError that names the offending key; never another exception."""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import selfsup
from selfsup import config as C
from selfsup.config import ConfigError

KEYS = sorted(C.flat_defaults(C.Config(method=C.method_config_class("simclr")())))
IDENT = st.text(string.ascii_lowercase + "_", min_size=1, max_size=8)

values = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["true", "false", "null", "~", "[]", "{}", "[1, 2]", "abc", "''", "-1", "0",
                     "1e-9", "10m", "fp8", "sgd", "[0.5]", "{a: 1}", "[[1]]", "0x10"]),
    st.text(max_size=12).filter(lambda s: "\n" not in s and "\r" not in s),
)  # fmt: skip
keys = st.one_of(
    st.sampled_from(KEYS),
    st.tuples(st.sampled_from(KEYS), IDENT).map(lambda t: f"{t[0].rsplit('.', 1)[0]}.{t[1]}"),
    st.tuples(IDENT, IDENT).map(".".join),
)


def _check(pairs: list[tuple[str, str]]) -> None:
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = selfsup.make_config("simclr", overrides=overrides)
    except ConfigError as err:
        msg = str(err)
        # Some key of the input (or a prefix of it: an unknown section) is named.
        named = any(
            k in msg or any(".".join(k.split(".")[:i]) in msg for i in range(1, k.count(".") + 1))
            for k, _ in pairs
        )
        assert named, (overrides, msg)
    else:
        assert isinstance(cfg, C.Config)
        C.validate(cfg)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(keys, values), min_size=1, max_size=1))
def test_single_override_never_crashes(pairs: list[tuple[str, str]]) -> None:
    _check(pairs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(keys, values), min_size=2, max_size=4))
def test_several_overrides_never_crash(pairs: list[tuple[str, str]]) -> None:
    _check(pairs)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.sampled_from(["method", "train", "optim", "data", "nope", "backbone"]),
                       st.one_of(st.dictionaries(IDENT, st.integers()), st.integers(), st.text(max_size=5)),
                       max_size=3))  # fmt: skip
def test_yaml_like_mappings_never_crash(data: dict[str, object]) -> None:
    try:
        selfsup.make_config(config=data)
    except ConfigError as err:
        assert any(k in str(err) for k in data), (data, str(err))
