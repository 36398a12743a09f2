"""A Flower app for testing Fleet nodes: FedAvg ServerApps that record what they aggregated."""
