"""ClientApp for flwr's own flower-supernode, with the same arithmetic as fedproto's handler.

It answers both content layouts a run of ``server_app`` carries: message-API FedAvg
(``"arrays"`` / ``"config"``) and legacy FedAvg (``fitins.*`` / ``evaluateins.*``), the latter
through flwr's own NumPyClient compatibility path. Node config: ``client`` (index),
``fail-fit-round``, ``fit-sleep``.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp

from superlink_app.arithmetic import ArithmeticClient

# Record names and the loss key flwr's app templates use; fedproto's node replies the same way,
# and FedAvg requires identical MetricRecord names and keys from every node of a round.
METRICS_RECORD = "metrics"
NUM_EXAMPLES_KEY = "num-examples"
EVAL_LOSS_KEY = "eval_loss"


def _handler(context: Context) -> ArithmeticClient:
    node_config = context.node_config
    return ArithmeticClient(
        client=int(node_config.get("client", 0)),
        fail_fit_round=int(node_config.get("fail-fit-round", 0)),
        fit_sleep=float(node_config.get("fit-sleep", 0.0)),
    )


class _LegacyClient(NumPyClient):
    def __init__(self, handler: ArithmeticClient) -> None:
        self.handler = handler

    def get_parameters(self, config):
        return self.handler.get_parameters(config)

    def fit(self, parameters, config):
        return self.handler.fit(parameters, config)

    def evaluate(self, parameters, config):
        return self.handler.evaluate(parameters, config)


legacy_app = ClientApp(client_fn=lambda context: _LegacyClient(_handler(context)).to_client())
app = ClientApp()


def _is_legacy(msg: Message) -> bool:
    return any(key.startswith(("fitins.", "evaluateins.")) for key in msg.content.keys())


@app.train()
def train(msg: Message, context: Context) -> Message:
    if _is_legacy(msg):
        return legacy_app(msg, context)
    config = dict(msg.content["config"])
    arrays, num_examples, metrics = _handler(context).fit(
        msg.content["arrays"].to_numpy_ndarrays(), config
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(arrays),
            METRICS_RECORD: MetricRecord({**metrics, NUM_EXAMPLES_KEY: num_examples}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    if _is_legacy(msg):
        return legacy_app(msg, context)
    loss, num_examples, metrics = _handler(context).evaluate(
        msg.content["arrays"].to_numpy_ndarrays(), dict(msg.content["config"])
    )
    record = MetricRecord({**metrics, EVAL_LOSS_KEY: loss, NUM_EXAMPLES_KEY: num_examples})
    return Message(content=RecordDict({METRICS_RECORD: record}), reply_to=msg)
