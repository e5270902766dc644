"""A small ReLU conv net that gradguard's registry does not know: the worked example of
docs/audit.md (`gradguard audit --model examples/audit/mynet.py:make_model ...`).

gradguard calls ``make_model`` with the arguments its signature names, here only
``num_classes`` (the number of classes of the audited data).
"""

from torch import nn


def make_model(num_classes=10):
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, num_classes),
    )
