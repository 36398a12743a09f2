"""Porting and wire-study kit for Flower's wire protocols.

The legacy ``FlowerService.Join`` stream:

- ``fedproto.kit.make_vectors``: golden vectors, the exact bytes of every message variant plus a manifest.
- ``fedproto.kit.conformance``: a scripted server that drives one client through every message and edge case.
- ``fedproto.kit.trace``: a man-in-the-middle relay that logs (and optionally disturbs) a live Join stream.

The Fleet API of ``flower-superlink``:

- ``fedproto.kit.make_fleet_vectors``: object-tree vectors, every object of a message and its tree,
  byte-identical to flwr's ``deflate()``; the request and response bytes of every Fleet RPC with
  their signing headers; signature vectors (fixed SECP384R1 and SECP256R1 keys, signatures that
  verify and tampered ones that do not).
- ``fedproto.kit.fleet_conformance`` (``fedproto-conformance --fleet``): a scripted SuperLink that
  grades one Fleet node step by step.
- ``fedproto.kit.fleet_trace`` (``fedproto-trace --fleet``): a relay between Fleet nodes and a
  ``flower-superlink`` that logs (and optionally disturbs) every call and message.

Nothing here imports flwr or tensorflow. The Join tools need only grpcio, protobuf and numpy. The
Fleet kit also needs ``cryptography``, the ``[fleet]`` extra (``pip install 'fedproto[fleet]'``):
the conformance runner checks request signatures as a SuperLink does and the vector generator signs
them (RFC 6979 signing: ``cryptography`` >= 44); only the relay runs without it.
"""
