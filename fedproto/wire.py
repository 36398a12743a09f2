"""Facts about the gRPC wire shared by the client, the server and the tools.

Plain values only: no grpc import, so the sans-IO core stays free of transport code.
"""

from fedproto.transport_pb2 import DESCRIPTOR

_SERVICE = DESCRIPTOR.services_by_name["FlowerService"]

# The one RPC of the protocol, as it appears in the HTTP/2 :path header.
JOIN_METHOD = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['Join'].name}"

# Both directions: 512 MiB, the limit flwr documents for start_server/start_client. (flwr 1.42's
# code actually passes 2 GiB - 1; a message between the two is refused by us, with a named error.)
MAX_MESSAGE_LENGTH = 536_870_912


def message_size_options(max_message_length: int = MAX_MESSAGE_LENGTH) -> list[tuple[str, int]]:
    """gRPC channel/server options that let messages up to ``max_message_length`` through."""
    return [
        ("grpc.max_send_message_length", max_message_length),
        ("grpc.max_receive_message_length", max_message_length),
    ]
