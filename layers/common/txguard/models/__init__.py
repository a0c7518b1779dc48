"""Trained fraud models beside the rules.

`artifact.py` reads and writes a model artifact (the one file a trained model is: canonical JSON of a LightGBM
model dump, its feature list and its decision threshold) and refuses anything malformed; `scoring.py` scores
transactions with it and explains a score with per-feature contributions. Serving never imports the training
library: LightGBM and scikit-learn are training-only dependencies.
"""
