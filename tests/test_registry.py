"""The Model Registry's champion alias, against a real SQLite MLflow store."""

import pytest
from mlflow.tracking import MlflowClient

from cnnpipe.config import MlflowConfig, TrainConfig
from cnnpipe.tracking.registry import CHAMPION, promote, should_register


@pytest.mark.parametrize(
    ("register", "limit", "expected"),
    [
        ("auto", 1.0, True),
        ("auto", 6, False),
        ("auto", 1, False),
        ("auto", 0.5, False),
        ("always", 6, True),
        ("never", 1.0, False),
    ],
)
def test_auto_registers_complete_trainings_only(register, limit, expected):
    train = TrainConfig(limit_train_batches=limit)
    assert should_register(MlflowConfig(register_model=register), train) is expected


def test_champion_moves_only_to_a_better_version_on_the_same_data(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    client.create_registered_model("m")
    run = client.create_run(client.create_experiment("e"))
    for _ in range(5):
        client.create_model_version("m", f"runs:/{run.info.run_id}/model", run.info.run_id)

    def champion() -> str:
        return str(client.get_model_version_by_alias("m", CHAMPION).version)

    assert promote(client, "m", "1", 0.80, "a.dir") == "m@champion is now version 1: test accuracy 0.8000"
    assert "stays version 1: test accuracy 0.8000 >= 0.7800" in promote(client, "m", "2", 0.78, "a.dir")
    assert champion() == "1"
    assert promote(client, "m", "3", 0.85, "a.dir").endswith("(was version 1)") and champion() == "3"
    assert "tested on other data" in promote(client, "m", "4", 0.99, "b.dir") and champion() == "3"
    assert promote(client, "m", "3", 0.85, "a.dir") == "m@champion is version 3"
    assert "stays version 3" in promote(client, "m", "5", 0.85, "a.dir")  # a tie keeps the one being served
    assert client.get_model_version("m", "2").tags == {"test.acc": "0.780000", "test.data": "a.dir"}
