"""Porting and wire-study kit for FlowerService.Join.

- ``fedproto.kit.make_vectors``: golden vectors, the exact bytes of every message variant plus a manifest.
- ``fedproto.kit.conformance``: a scripted server that drives one client through every message and edge case.
- ``fedproto.kit.trace``: a man-in-the-middle relay that logs (and optionally disturbs) a live Join stream.

Nothing here imports flwr or tensorflow: only grpcio, protobuf and numpy.
"""
