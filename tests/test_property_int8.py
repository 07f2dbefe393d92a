"""Random small int8 CNNs against TFLite Micro, every output byte."""

from hypothesis import HealthCheck, given, settings

import tvm_patch
from conftest import assert_bit_exact
from random_cnn import build, specs


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_random_cnn_bit_exact(spec):
    data = build(spec)
    compiled = tvm_patch.build(tvm_patch.load(data))
    assert_bit_exact(data, compiled, n=2, seed=spec.seed)
