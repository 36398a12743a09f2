"""fedproto.server_role, the sans-IO server: every instruction it encodes (checked against flwr's
own serde), every reply kind it decodes, and every FailureKind a reply can earn."""

from __future__ import annotations

import io

import flwr.common as flwr_common
import numpy as np
import pytest
from flwr.common import serde
from flwr.proto import transport_pb2 as flwr_pb2

from fedproto.codec import ndarray_to_bytes, ndarrays_to_parameters, scalars_to_proto
from fedproto.server_role import (
    EvaluateIns,
    EvaluateRes,
    FailureKind,
    FitIns,
    FitRes,
    ReplyError,
    check_update,
    decode_disconnect_res,
    decode_evaluate_res,
    decode_fit_res,
    decode_get_parameters_res,
    decode_get_properties_res,
    encode_evaluate_ins,
    encode_fit_ins,
    encode_get_parameters_ins,
    encode_get_properties_ins,
    encode_reconnect_ins,
    enum_name,
    parse_reply,
)
from fedproto.transport_pb2 import ClientMessage, Code, Parameters, Reason, Scalar, ServerMessage

MODEL = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, dtype=np.float64)]
CONFIG = {"lr": 0.5, "epochs": 2, "tag": "a", "flag": True, "blob": b"\x01"}
OK = {"code": Code.OK, "message": "Success"}


# ---------------------------------------------------------------------------- instructions


def flwr_server_message(**field) -> ServerMessage:
    """What flwr's server sends: its serde, wrapped in its ServerMessage, read back as ours."""
    return ServerMessage.FromString(flwr_pb2.ServerMessage(**field).SerializeToString(deterministic=True))


def ours(data: bytes) -> ServerMessage:
    return ServerMessage.FromString(data)


FLWR_PARAMETERS = flwr_common.ndarrays_to_parameters(MODEL)


def test_each_instruction_is_what_flwr_sends():
    assert ours(encode_fit_ins(FitIns(MODEL, CONFIG))) == flwr_server_message(
        fit_ins=serde.fit_ins_to_proto(flwr_common.FitIns(FLWR_PARAMETERS, CONFIG)))
    assert ours(encode_evaluate_ins(EvaluateIns(MODEL, CONFIG))) == flwr_server_message(
        evaluate_ins=serde.evaluate_ins_to_proto(flwr_common.EvaluateIns(FLWR_PARAMETERS, CONFIG)))
    assert ours(encode_get_properties_ins(CONFIG)) == flwr_server_message(
        get_properties_ins=serde.get_properties_ins_to_proto(flwr_common.GetPropertiesIns(CONFIG)))
    assert ours(encode_get_parameters_ins()) == flwr_server_message(
        get_parameters_ins=serde.get_parameters_ins_to_proto(flwr_common.GetParametersIns({})))
    for seconds in (0, 5):
        assert ours(encode_reconnect_ins(seconds)) == flwr_server_message(
            reconnect_ins=serde.reconnect_ins_to_proto(flwr_common.ReconnectIns(seconds)))


def test_get_parameters_and_final_reconnect_are_byte_exact():
    assert encode_get_parameters_ins() == ServerMessage(
        get_parameters_ins=ServerMessage.GetParametersIns()).SerializeToString()
    assert encode_reconnect_ins(0) == ServerMessage(reconnect_ins=ServerMessage.ReconnectIns()).SerializeToString()


# ---------------------------------------------------------------------------- replies that count


def test_fit_res_decodes_to_arrays_count_and_metrics():
    reply = ClientMessage(fit_res={"status": OK, "parameters": ndarrays_to_parameters(MODEL),
                                   "num_examples": 7, "metrics": scalars_to_proto({"loss": 0.5})})
    result = decode_fit_res(parse_reply(reply.SerializeToString()), MODEL)
    assert isinstance(result, FitRes)
    assert [(a.dtype, a.tolist()) for a in result.parameters] == [(m.dtype, m.tolist()) for m in MODEL]
    assert (result.num_examples, result.metrics) == (7, {"loss": 0.5})


def test_fit_res_without_a_model_yet_takes_any_tensors():
    reply = ClientMessage(fit_res={"status": OK, "parameters": ndarrays_to_parameters([np.zeros(9)])})
    assert decode_fit_res(reply, []).parameters[0].shape == (9,)


def test_evaluate_res_decodes_to_loss_count_and_metrics():
    reply = ClientMessage(evaluate_res={"status": OK, "loss": 0.25, "num_examples": 3,
                                        "metrics": scalars_to_proto({"accuracy": 0.75})})
    assert decode_evaluate_res(reply) == EvaluateRes(0.25, 3, {"accuracy": 0.75})


def test_get_parameters_properties_and_disconnect_res():
    parameters = ClientMessage(get_parameters_res={"status": OK, "parameters": ndarrays_to_parameters(MODEL)})
    assert [a.shape for a in decode_get_parameters_res(parameters)] == [(2, 3), (3,)]
    properties = ClientMessage(get_properties_res={"status": OK, "properties": scalars_to_proto(CONFIG)})
    assert decode_get_properties_res(properties) == CONFIG
    disconnect = ClientMessage(disconnect_res=ClientMessage.DisconnectRes(reason=Reason.ACK))
    assert decode_disconnect_res(disconnect) == Reason.ACK


# ---------------------------------------------------------------------------- replies that do not


def pickled() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([object()], dtype=object), allow_pickle=True)
    return buffer.getvalue()


NAN_MODEL = [MODEL[0], np.array([1.0, np.nan, 0.0])]
FAILURES = [
    ("fit", ClientMessage(evaluate_res={"status": OK}), FailureKind.WRONG_REPLY, "expected fit_res, got evaluate_res"),
    ("fit", ClientMessage(), FailureKind.WRONG_REPLY, "expected fit_res, got a ClientMessage with nothing set"),
    ("fit", ClientMessage(fit_res={"status": {"code": Code.FIT_NOT_IMPLEMENTED, "message": "fit raised X"}}),
     FailureKind.STATUS, "FIT_NOT_IMPLEMENTED: fit raised X"),
    ("fit", ClientMessage(fit_res={"status": {"code": 42, "message": "?"}}), FailureKind.STATUS,
     "unknown code 42: ?"),
    ("fit", ClientMessage(fit_res={"status": OK, "parameters": Parameters(
        tensors=[ndarray_to_bytes(MODEL[0]), pickled()], tensor_type="numpy.ndarray")}),
     FailureKind.BAD_TENSOR, "FitRes.parameters.tensors[1]: object arrays are not accepted (pickled .npy)"),
    ("fit", ClientMessage(fit_res={"status": OK, "parameters": ndarrays_to_parameters(NAN_MODEL)}),
     FailureKind.NON_FINITE, "FitRes.parameters.tensors[1] holds NaN or Inf"),
    ("fit", ClientMessage(fit_res={"status": OK, "parameters": ndarrays_to_parameters(MODEL[:1])}),
     FailureKind.SHAPE_MISMATCH, "FitRes.parameters has 1 tensors, the model has 2"),
    ("fit", ClientMessage(fit_res={"status": OK, "parameters": ndarrays_to_parameters([MODEL[0].T, MODEL[1]])}),
     FailureKind.SHAPE_MISMATCH, "FitRes.parameters.tensors[0] has shape (3, 2), the model's is (2, 3)"),
    ("fit", ClientMessage(fit_res={"status": OK, "parameters": ndarrays_to_parameters(
        [MODEL[0], MODEL[1].astype(">f8")])}),
     FailureKind.DTYPE_MISMATCH, "FitRes.parameters.tensors[1] has dtype >f8, the model's is <f8"),
    ("get_parameters", ClientMessage(get_parameters_res={"status": OK}), FailureKind.UNUSABLE_MODEL,
     "GetParametersRes.parameters holds no tensors"),
    ("get_parameters", ClientMessage(get_parameters_res={"status": OK, "parameters": ndarrays_to_parameters(
        [MODEL[0], np.array([True, False])])}), FailureKind.UNUSABLE_MODEL,
     "GetParametersRes.parameters.tensors[1] has dtype bool, not a number"),
    ("fit", ClientMessage(fit_res={"status": OK, "parameters": ndarrays_to_parameters(MODEL), "num_examples": -1}),
     FailureKind.MALFORMED, "FitRes.num_examples is negative (-1)"),
    ("fit", ClientMessage(fit_res={"status": OK, "parameters": ndarrays_to_parameters(MODEL),
                                   "metrics": {"m": Scalar()}}),
     FailureKind.MALFORMED, "FitRes.metrics['m']: Scalar has no value set"),
    ("evaluate", ClientMessage(evaluate_res={"status": OK, "loss": float("inf")}), FailureKind.NON_FINITE,
     "EvaluateRes.loss is inf"),
    ("evaluate", ClientMessage(evaluate_res={"status": OK, "num_examples": -3}), FailureKind.MALFORMED,
     "EvaluateRes.num_examples is negative (-3)"),
    ("get_parameters", ClientMessage(get_parameters_res={"status": OK, "parameters": ndarrays_to_parameters(
        NAN_MODEL)}), FailureKind.NON_FINITE, "GetParametersRes.parameters.tensors[1] holds NaN or Inf"),
    ("get_parameters", ClientMessage(get_parameters_res={"status": OK, "parameters": Parameters(
        tensors=[b"\x93NUMPY"], tensor_type="torch.Tensor")}), FailureKind.BAD_TENSOR,
     "GetParametersRes.parameters.tensor_type: unknown tensor_type 'torch.Tensor' "
     "(expected one of 'numpy.ndarray', 'cpp_double')"),
    ("get_properties", ClientMessage(get_properties_res={"status": {"code": Code.GET_PROPERTIES_NOT_IMPLEMENTED}}),
     FailureKind.STATUS, "GET_PROPERTIES_NOT_IMPLEMENTED: "),
    ("disconnect", ClientMessage(fit_res={}), FailureKind.WRONG_REPLY, "expected disconnect_res, got fit_res"),
]
DECODERS = {
    "fit": lambda reply: decode_fit_res(reply, MODEL),
    "evaluate": decode_evaluate_res,
    "get_parameters": decode_get_parameters_res,
    "get_properties": decode_get_properties_res,
    "disconnect": decode_disconnect_res,
}


@pytest.mark.parametrize("step, reply, kind, reason", FAILURES, ids=[f[3][:40] for f in FAILURES])
def test_each_unusable_reply_is_a_named_reply_error(step, reply, kind, reason):
    with pytest.raises(ReplyError) as caught:
        DECODERS[step](parse_reply(reply.SerializeToString()))
    assert (caught.value.kind, caught.value.reason, str(caught.value)) == (kind, reason, reason)


def test_bytes_that_are_not_a_client_message_are_malformed():
    with pytest.raises(ReplyError) as caught:
        parse_reply(b"\xff\xff\xff")
    assert caught.value.kind is FailureKind.MALFORMED
    assert caught.value.reason == (
        "reply is not a ClientMessage (Error parsing message with type 'flwr.proto.ClientMessage'; 3 bytes)")


def test_every_failure_kind_a_reply_can_earn_is_covered():
    # STREAM_CLOSED and TIMEOUT come from the transport (no reply at all), never from a decoder.
    decoded = {kind for _, _, kind, _ in FAILURES} | {FailureKind.MALFORMED}
    assert decoded == set(FailureKind) - {FailureKind.STREAM_CLOSED, FailureKind.TIMEOUT}


def test_check_update_accepts_the_models_own_shapes():
    check_update([m.copy() for m in MODEL], MODEL)


def test_enum_name_names_unknown_values_instead_of_raising():
    assert (enum_name(Code, Code.OK), enum_name(Code, 99)) == ("OK", "unknown code 99")
    assert (enum_name(Reason, Reason.ACK), enum_name(Reason, 7)) == ("ACK", "unknown reason 7")
