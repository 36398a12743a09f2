"""The HAR job as a Flower app: python -m fedproto.har --server superlink runs it with `flwr run`."""
