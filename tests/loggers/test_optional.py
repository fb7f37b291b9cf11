import sys

import pytest

from momentumlab.loggers import MLflowLogger, TensorBoardLogger, WandbLogger


@pytest.mark.parametrize(
    ("module", "build", "extra"),
    [
        ("tensorboard", lambda path: TensorBoardLogger(path), "tensorboard"),
        ("wandb", lambda path: WandbLogger("project", path), "wandb"),
        ("mlflow", lambda path: MLflowLogger(path, "experiment"), "mlflow"),
    ],
)
def test_a_missing_integration_names_the_extra_to_install(tmp_path, monkeypatch, module, build, extra):
    monkeypatch.setitem(sys.modules, module, None)  # what Python does for a package that is not installed
    with pytest.raises(ImportError, match=rf"pip install 'momentumlab\[{extra}\]'"):
        build(tmp_path)
