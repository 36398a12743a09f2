"""The HAR handler as a ClientApp, for flwr's own flower-supernode (fedproto's nodes serve the
same handler directly: python -m fedproto.client --superlink ... --app fedproto.har.client_app:make_client).

Set HAR_PARTITION_FILE (and HAR_HIDDEN_UNITS, HAR_SEED) in the SuperNode's environment.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedproto.har.client_app import make_client

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    weights, examples, metrics = make_client().fit(
        msg.content["arrays"].to_numpy_ndarrays(), dict(msg.content["config"]))
    content = RecordDict({"arrays": ArrayRecord(weights),
                          "metrics": MetricRecord({**metrics, "num-examples": examples})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    loss, examples, metrics = make_client().evaluate(
        msg.content["arrays"].to_numpy_ndarrays(), dict(msg.content["config"]))
    record = MetricRecord({**metrics, "eval_loss": loss, "num-examples": examples})
    return Message(content=RecordDict({"metrics": record}), reply_to=msg)
