"""The HAR job as a Flower app: python -m har --server superlink runs it with `flwr run`."""
