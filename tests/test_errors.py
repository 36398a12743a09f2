"""One error family: everything fedproto refuses is a FedprotoError, caught in one clause."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import fedproto
from fedproto import CodecError, FedprotoError, HandlerError, ProtocolError, ReplyError
from fedproto.codec import bytes_to_ndarray
from fedproto.dispatch import ClientSession
from fedproto.server.checkpoint import CheckpointError, load_npz
from fedproto.server_role import FailureKind, parse_reply


def core_exceptions() -> list[type]:
    """Every exception class defined in a module of the fedproto package."""
    found = []
    for module_info in pkgutil.iter_modules(fedproto.__path__):
        module = importlib.import_module(f"fedproto.{module_info.name}")
        found += [value for value in vars(module).values()
                  if inspect.isclass(value) and issubclass(value, BaseException)
                  and value.__module__ == module.__name__]
    return found


def test_every_exception_the_core_defines_is_a_fedproto_error():
    classes = core_exceptions()
    assert {CodecError, ProtocolError, HandlerError, ReplyError} <= set(classes)
    assert [c.__name__ for c in classes if not issubclass(c, FedprotoError)] == []


def test_the_package_exports_the_family():
    for name in ("FedprotoError", "CodecError", "ProtocolError", "HandlerError", "ReplyError"):
        assert name in fedproto.__all__
    assert issubclass(CheckpointError, FedprotoError)


@pytest.mark.parametrize("refuse", [
    lambda tmp_path: bytes_to_ndarray(b"not npy"),
    lambda tmp_path: ClientSession(object()).receive_bytes(b"\xff\xff"),
    lambda tmp_path: parse_reply(b"\xff\xff"),
    lambda tmp_path: load_npz((tmp_path / "x.npz").write_bytes(b"junk") and tmp_path / "x.npz"),
], ids=["codec", "client_session", "server_role", "checkpoint"])
def test_one_clause_catches_every_refusal(refuse, tmp_path):
    with pytest.raises(FedprotoError):
        refuse(tmp_path)


def test_reply_error_keeps_its_kind_and_reason():
    error = ReplyError(FailureKind.TIMEOUT, "no reply within 3 s")
    assert (error.kind, error.reason, str(error)) == (FailureKind.TIMEOUT, "no reply within 3 s", "no reply within 3 s")
