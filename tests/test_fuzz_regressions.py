"""Every input that ever broke a decoder, kept byte for byte (issue 9).

Each case was a traceback (or a tensor silently accepted) before the codec's one rule; the
``found`` note says how it was found and what the decoder of commit 93f529f did with it. New
crashes from ``make fuzz`` (``results/fuzz-crashes/``) are added here with their exact bytes.
"""

from __future__ import annotations

import pytest

from fedproto.codec import TENSOR_TYPE, CodecError, bytes_to_ndarray
from fedproto.dispatch import ClientSession, ProtocolError
from fedproto.kit.make_vectors import DEFAULT_DIR
from fedproto.transport_pb2 import Parameters, ServerMessage


def npy_v1(header: bytes, data: bytes = b"") -> bytes:
    """Magic, version 1.0, the header's length and the header padded as numpy pads it."""
    padded = header + b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(padded).to_bytes(2, "little") + padded + data


# name: (exact bytes, found / behaviour before, reason now)
REGRESSIONS = {
    "structured_by_comma_descr": (
        b"\x93NUMPY\x01\x00v\x00{'descr': '>i,', 'fortran_order': False, 'shape': (3,), }"
        + b" " * 60 + b"\n\x00\x00\x00\x07\xff\xff\xff\xf8\x00\x01\x00\x00",
        "mutation of a server_fit_ins tensor (random mutator, seed 1): decoded as |V4",
        "structured dtype [('f0', '>i4')] is not accepted",
    ),
    "bytes_by_deprecated_alias": (
        b"\x93NUMPY\x01\x00v\x00{'descr': '<a4', 'fortran_order': False, 'shape': (2, 0, 3), }"
        + b" " * 55 + b"\n",
        "mutation of server_fit_ins tensor (random mutator, seed 1): decoded as |S4",
        "dtype |S4 is not accepted (only bool, int, uint, float, complex)",
    ),
    "void_zero_itemsize": (
        b"\x93NUMPY\x01\x00v\x00{'descr': '|V0', 'fortran_order': False, 'shape': (0,), }"
        + b" " * 60 + b"\n",
        "mutation of server_fit_ins tensor (random mutator, seed 1): decoded as |V0",
        "dtype |V0 is not accepted (only bool, int, uint, float, complex)",
    ),
    "sub_array_dtype": (
        npy_v1(b"{'descr': ('<f4', (2,)), 'fortran_order': False, 'shape': (3,), }", bytes(24)),
        "issue 9: ValueError 'cannot reshape array of size 6 into shape (3,)' escaped",
        "sub-array dtype |V8 (2,) is not accepted",
    ),
    "empty_but_product_overflows": (
        npy_v1(b"{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4611686018427387904, 4611686018427387904), }"),
        "issue 9: ValueError 'array is too big' escaped from numpy's read_array",
        "bad .npy header (shape (0, 4611686018427387904, 4611686018427387904) "
        "is over the 536870912-byte message limit)",
    ),
    "empty_but_dimension_beyond_int64": (
        npy_v1(b"{'descr': '|u1', 'fortran_order': False, 'shape': (1000000000000000000000000000000, 0), }"),
        "issue 9: OverflowError 'Python int too large to convert to C long' escaped",
        "bad .npy header (shape (1000000000000000000000000000000, 0) is over the 536870912-byte message limit)",
    ),
    "bool_dimension": (
        npy_v1(b"{'descr': '<f4', 'fortran_order': False, 'shape': (True, 3), }", bytes(12)),
        "issue 9: TypeError 'an integer is required' escaped",
        "bad .npy header (shape (True, 3) is not a tuple of non-negative ints)",
    ),
    "zero_itemsize_10e12_elements": (
        npy_v1(b"{'descr': '|S0', 'fortran_order': False, 'shape': (1000000000000,), }"),
        "issue 9: decoded to an |S0 array of 10^12 elements that spins any handler touching it",
        "dtype |S0 is not accepted (only bool, int, uint, float, complex)",
    ),
}


@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_regression_input_is_a_codec_error(name):
    data, _found, reason = REGRESSIONS[name]
    with pytest.raises(CodecError) as caught:
        bytes_to_ndarray(data, "FitIns.parameters.tensors[1]")
    assert (caught.value.field, caught.value.reason) == ("FitIns.parameters.tensors[1]", reason)


@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_regression_input_inside_fit_ins_is_a_protocol_error_for_the_client(name):
    """The edge client printed a traceback here; now the session refuses the instruction."""
    fit_ins = ServerMessage.FromString((DEFAULT_DIR / "server_evaluate_ins.bin").read_bytes()).evaluate_ins
    tensors = list(fit_ins.parameters.tensors)
    tensors.insert(1, REGRESSIONS[name][0])
    message = ServerMessage(fit_ins=ServerMessage.FitIns(
        parameters=Parameters(tensors=tensors, tensor_type=TENSOR_TYPE), config=fit_ins.config))
    session = ClientSession(handler=object())
    with pytest.raises(ProtocolError) as caught:
        session.receive_bytes(message.SerializeToString())
    assert f"FitIns.parameters.tensors[1]: {REGRESSIONS[name][2]}" in str(caught.value)


def test_the_regression_headers_are_what_the_notes_say():
    # The hand-padded literals are well-formed .npy framing: the data starts 64-byte aligned.
    for name, (data, _found, _reason) in REGRESSIONS.items():
        header_length = int.from_bytes(data[8:10], "little")
        assert (10 + header_length) % 64 == 0, name
        assert data[10 + header_length - 1:10 + header_length] == b"\n", name
