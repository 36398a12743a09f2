"""Human-activity recognition on MotionSense: centralized vs local-only vs federated (fedproto).

Run ``python -m fedproto.har --help``. Only ``har.model`` imports TensorFlow.
"""
