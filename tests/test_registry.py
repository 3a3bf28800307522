from __future__ import annotations

from dataclasses import dataclass

import pytest

import selfsup
from selfsup.config import MethodConfig
from selfsup.methods.base import Method
from selfsup.registry import (
    _METHODS,
    UnknownNameError,
    get_method_class,
    list_methods,
    register_method,
)


def test_builtin_methods_registered() -> None:
    assert "simclr" in list_methods()
    assert list_methods("sim*") == [n for n in list_methods() if n.startswith("sim")]
    assert get_method_class("simclr").__name__ == "SimCLR"


def test_unknown_method_suggests_close_names() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean simclr"):
        get_method_class("simclrr")
    with pytest.raises(selfsup.ConfigError, match="unknown method 'nope'"):
        selfsup.make_config("nope")


def test_register_new_method_and_refuse_duplicates() -> None:
    @dataclass
    class ToyConfig(MethodConfig):
        name: str = "toy-test"

    try:

        @register_method("toy-test")
        class Toy(Method):
            Config = ToyConfig

        assert "toy-test" in list_methods("toy*")
        assert get_method_class("toy-test") is Toy
        cfg = selfsup.make_config("toy-test")
        assert cfg.method.name == "toy-test"
        with pytest.raises(ValueError, match="already registered"):

            @register_method("toy-test")
            class Toy2(Method):
                Config = ToyConfig
    finally:
        _METHODS.pop("toy-test", None)


@pytest.mark.parametrize("name", ["timm:mobilenetv3_small_100", "timm:efficientnet_b0", "resnet18"])
def test_backbone_embed_dim_is_what_forward_returns(name: str) -> None:
    # MobileNetV3 has a 1024-d pre-logits layer after its 576-d pooled features: heads sized
    # from num_features would not fit its output.
    import torch

    from selfsup.backbones import create_backbone
    from selfsup.config import BackboneConfig

    bb = create_backbone(BackboneConfig(name=name), 32).eval()
    with torch.no_grad():
        out = bb(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, bb.embed_dim), (name, out.shape, bb.embed_dim)
