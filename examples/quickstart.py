"""Search, finalize and predict from Python (README "Python API"; a test runs this file).

    python examples/quickstart.py DATA [STUDIES] [WEIGHTS]

DATA: a data set, DATA/train|validation|test/<class>/<images> (`clothopt data fetch` gets one);
STUDIES: the folder of the study's database and files (default: studies); WEIGHTS: imagenet
(the default), none (random: a plumbing check only) or a weights file.
"""

import sys
from pathlib import Path

import clothopt

data = Path(sys.argv[1])
studies = Path(sys.argv[2] if len(sys.argv) > 2 else "studies").absolute()
weights = sys.argv[3] if len(sys.argv) > 3 else "imagenet"

# A clothopt study is an optuna.Study; this one walks the quick grid (8 points) of MobileNet.
study = clothopt.create_study(
    data,
    backbone="mobilenet_025",
    space="quick",
    storage=f"sqlite:///{studies / 'clothopt.db'}",
    study_name="quickstart",
    weights=weights,
    load_if_exists=True,  # a second run continues the same study
)
summary = clothopt.optimize(study, n_trials=3)  # exactly once per grid point, resumable
print(f"ran {summary.ran} trials; best {study.best_value:.3f} with {study.best_params}")

# Retrain the best trial, export one Keras model, score the test split with it.
report = clothopt.finalize(study)  # the paper's 5 epochs
low, high = report["f1_macro_ci95"]
print(f"test macro-F1 {report['test']['f1_macro']:.3f} (95% CI {low:.3f}-{high:.3f})")

model = clothopt.load_model(study)  # the study's final/model.keras
for prediction in clothopt.predict_images(model, data / "test")[:3]:
    label, probability = prediction.top[0]
    print(f"{prediction.image}: {label} {probability:.2f}")
