"""Human-activity recognition on MotionSense: centralized vs local-only vs federated (fedproto).

Run ``python -m har --help``. Only ``har.model`` imports TensorFlow.
"""
