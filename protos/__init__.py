"""gRPC contracts of fleetloop and the helpers both sides of them share.

``weights.proto`` defines WeightService (package ``fleetloop.weights.v1``); ``weights_pb2*.py``
are generated from it by ``python -m fleetloop.protos.generate`` and checked in. ``codec``
turns tensors into raw little-endian bytes with dtype names and checksums, and back.
"""
