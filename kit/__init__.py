"""Porting and wire-study kit for Flower's wire protocols.

The legacy ``FlowerService.Join`` stream:

- ``fedproto.kit.make_vectors``: golden vectors, the exact bytes of every message variant plus a manifest.
- ``fedproto.kit.conformance``: a scripted server that drives one client through every message and edge case.
- ``fedproto.kit.trace``: a man-in-the-middle relay that logs (and optionally disturbs) a live Join stream.

The Fleet API of ``flower-superlink``:

- ``fedproto.kit.make_fleet_vectors``: object-tree vectors, every object of a message and its tree,
  byte-identical to flwr's ``deflate()``.

Nothing here imports flwr or tensorflow: only grpcio, protobuf and numpy.
"""
