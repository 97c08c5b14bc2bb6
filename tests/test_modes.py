"""Parsing of fwd_algo / bwd_algo values and of the algorithm-mode environment variables."""
import warnings

import pytest

from helpers_tuner import cache_dir  # noqa: F401  (fixture)
from warpsparse.algorithms.base import Op
from warpsparse.tuner import (
    AUTO,
    SPARSE_CONV_BWD_ALGO_MODE,
    SPARSE_CONV_FWD_ALGO_MODE,
    SPARSE_DEPTHWISE_CONV_BWD_ALGO_MODE,
    SPARSE_DEPTHWISE_CONV_FWD_ALGO_MODE,
    mode_for,
)
from warpsparse.tuner.modes import CONV_ALGORITHMS, DEPTHWISE_ALGORITHMS, FOREIGN_ALGORITHMS, env_setting, parse_mode

pytestmark = pytest.mark.usefixtures("cache_dir")


def test_enum_members_match_the_library_names():
    for enum_cls in (SPARSE_CONV_FWD_ALGO_MODE, SPARSE_CONV_BWD_ALGO_MODE):
        assert {m.value for m in enum_cls} == set(CONV_ALGORITHMS) | {"auto"}
        assert enum_cls.IMPLICIT_GEMM.value == "implicit_gemm" and enum_cls.CUPY_IMPLICIT_GEMM == "cupy_implicit_gemm"
    for enum_cls in (SPARSE_DEPTHWISE_CONV_FWD_ALGO_MODE, SPARSE_DEPTHWISE_CONV_BWD_ALGO_MODE):
        assert {m.value for m in enum_cls} == set(DEPTHWISE_ALGORITHMS) | {"auto"}


@pytest.mark.parametrize("value, expected", [
    ("explicit_gemm", ("explicit_gemm",)),
    ("  Implicit_GEMM ", ("implicit_gemm",)),
    ("[implicit_gemm,cupy_implicit_gemm]", ("cupy_implicit_gemm", "implicit_gemm")),
    (" [ IMPLICIT_GEMM , 'explicit_gemm' ] ", ("explicit_gemm", "implicit_gemm")),
    ("implicit_gemm,explicit_gemm,implicit_gemm", ("explicit_gemm", "implicit_gemm")),
    (SPARSE_CONV_FWD_ALGO_MODE.CUPY_IMPLICIT_GEMM, ("cupy_implicit_gemm",)),
    ([SPARSE_CONV_BWD_ALGO_MODE.EXPLICIT_GEMM, "implicit_gemm"], ("explicit_gemm", "implicit_gemm")),
    (("implicit_gemm",), ("implicit_gemm",)),
    ("auto", AUTO), ("AUTO", AUTO), (SPARSE_CONV_FWD_ALGO_MODE.AUTO, AUTO), ("all", AUTO),
    (["implicit_gemm", "auto"], AUTO), ([], AUTO), ("[]", AUTO), ("", AUTO),
])
def test_conv_values(value, expected):
    assert parse_mode(value, False, "fwd_algo") == expected


@pytest.mark.parametrize("value, expected", [
    ("explicit", ("explicit",)),
    ("[implicit, cupy_implicit]", ("cupy_implicit", "implicit")),
    (SPARSE_DEPTHWISE_CONV_BWD_ALGO_MODE.IMPLICIT, ("implicit",)),
    ("implicit_gemm", ("implicit",)),  # WarpConvNet's depthwise settings used the conv names
    (SPARSE_CONV_FWD_ALGO_MODE.EXPLICIT_GEMM, ("explicit",)),
    (SPARSE_DEPTHWISE_CONV_FWD_ALGO_MODE.AUTO, AUTO),
])
def test_depthwise_values(value, expected):
    assert parse_mode(value, True, "fwd_algo") == expected


@pytest.mark.parametrize("value", ["explicit", "foo", "[implicit_gemm, bogus]", "explicit gemm", "auto,bogus",
                                   ["auto", "bogus"]])
def test_unknown_conv_name_is_a_value_error_listing_valid_names(value):
    with pytest.raises(ValueError) as err:
        parse_mode(value, False, "bwd_algo")
    msg = str(err.value)
    assert msg.startswith("bwd_algo") and "valid names" in msg
    assert all(name in msg for name in CONV_ALGORITHMS)


def test_depthwise_rejects_other_names():
    with pytest.raises(ValueError, match="valid names: auto, explicit, implicit, cupy_implicit"):
        parse_mode("mask", True, "fwd_algo")


@pytest.mark.parametrize("value", [3, 2.5, [SPARSE_CONV_FWD_ALGO_MODE.EXPLICIT_GEMM, 7], {"implicit_gemm"}])
def test_wrong_type_is_a_type_error_naming_the_argument(value):
    with pytest.raises(TypeError, match="fwd_algo must be"):
        mode_for(Op.CONV_FWD, value)


def test_warpconvnet_names_warn_once_and_are_skipped():
    assert {"cutlass_implicit_gemm", "mask_gemm", "cute_grouped", "wmma_implicit_gemm"} <= FOREIGN_ALGORITHMS
    with pytest.warns(UserWarning, match="cutlass_implicit_gemm.*does not provide") as record:
        assert parse_mode("[cutlass_implicit_gemm, implicit_gemm]", False, "fwd_algo") == ("implicit_gemm",)
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse_mode("cutlass_implicit_gemm", False, "fwd_algo") is AUTO  # only foreign names: auto
    with pytest.warns(UserWarning, match="mask_gemm"):
        assert parse_mode(["mask_gemm"], True, "bwd_algo") is AUTO


@pytest.mark.parametrize("op, variable", [
    (Op.CONV_FWD, "WARPCONVNET_FWD_ALGO_MODE"), (Op.CONV_DGRAD, "WARPCONVNET_BWD_ALGO_MODE"),
    (Op.CONV_WGRAD, "WARPCONVNET_BWD_ALGO_MODE"), (Op.CONV_DGRAD, "WARPCONVNET_DGRAD_ALGO_MODE"),
    (Op.CONV_WGRAD, "WARPCONVNET_WGRAD_ALGO_MODE"), (Op.DW_FWD, "WARPCONVNET_DEPTHWISE_CONV_FWD_ALGO_MODE"),
    (Op.DW_DGRAD, "WARPCONVNET_DEPTHWISE_CONV_BWD_ALGO_MODE"),
    (Op.DW_WGRAD, "WARPCONVNET_DEPTHWISE_CONV_BWD_ALGO_MODE"),
])
def test_environment_is_read_at_call_time(monkeypatch, op, variable):
    assert mode_for(op, None) is AUTO
    name = "implicit" if op.depthwise else "implicit_gemm"
    monkeypatch.setenv(variable, f" [{name.upper()}] ")
    assert mode_for(op, None) == (name,)
    monkeypatch.setenv(variable, "auto")
    assert mode_for(op, None) is AUTO
    other = "explicit" if op.depthwise else "explicit_gemm"
    assert mode_for(op, other) == (other,)  # an explicit argument wins over the environment
    monkeypatch.delenv(variable)
    assert mode_for(op, None) is AUTO


def test_blank_finer_variable_falls_back_to_bwd(monkeypatch):
    """A blank variable counts as unset, for the call and for what ``warpsparse env`` reports alike."""
    monkeypatch.setenv("WARPCONVNET_DGRAD_ALGO_MODE", " ")
    monkeypatch.setenv("WARPCONVNET_BWD_ALGO_MODE", "explicit_gemm")
    assert mode_for(Op.CONV_DGRAD, None) == ("explicit_gemm",)
    assert env_setting(Op.CONV_DGRAD) == ("WARPCONVNET_BWD_ALGO_MODE", "explicit_gemm")


def test_finer_gradient_variables_override_bwd(monkeypatch):
    monkeypatch.setenv("WARPCONVNET_BWD_ALGO_MODE", "explicit_gemm")
    monkeypatch.setenv("WARPCONVNET_DGRAD_ALGO_MODE", "[implicit_gemm, cupy_implicit_gemm]")
    assert mode_for(Op.CONV_DGRAD, None) == ("cupy_implicit_gemm", "implicit_gemm")
    assert mode_for(Op.CONV_WGRAD, None) == ("explicit_gemm",)
    assert mode_for(Op.CONV_FWD, None) is AUTO
    assert mode_for(Op.DW_DGRAD, None) is AUTO  # conv variables do not touch depthwise ops


def test_bad_environment_value_names_variable_value_and_valid_names(monkeypatch):
    monkeypatch.setenv("WARPCONVNET_WGRAD_ALGO_MODE", "[implicit_gemm, turbo]")
    with pytest.raises(ValueError) as err:
        mode_for(Op.CONV_WGRAD, None)
    msg = str(err.value)
    assert "WARPCONVNET_WGRAD_ALGO_MODE='[implicit_gemm, turbo]'" in msg and "'turbo'" in msg
    assert "explicit_gemm" in msg and "cupy_implicit_gemm" in msg
    monkeypatch.setenv("WARPCONVNET_DEPTHWISE_CONV_FWD_ALGO_MODE", "explicit_gemm_grouped_xl")
    with pytest.raises(ValueError, match="WARPCONVNET_DEPTHWISE_CONV_FWD_ALGO_MODE="):
        mode_for(Op.DW_FWD, None)
