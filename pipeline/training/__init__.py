"""Fitting ViT-FIQA with Ray Train on sharded data (docs/training.md).

The driver (`run.fit`) lists the data once (identity and status columns only), maps
identities to class indices (sorted identity strings -> 0..C-1), splits off a held-out
fraction of images by a hash of their id, and hands three Ray datasets to a `TorchTrainer`:
`train` and `holdout` (split across workers) and `eval` (read whole by rank 0 for the
per-epoch verification). Decoding runs in Ray Data CPU tasks (`data`), which also give a
share of the training images a fresh degradation every epoch; augmentation runs in torch
inside the loop (`loop`), on the batch's device. The network is replicated under DDP; the
class centres of the margin head are split over the workers (`pipeline/class_shard.py`).
Every epoch (and every N steps) each worker reports a checkpoint: rank 0 the network, its
optimiser, step and history; every rank its slice of the centres with their optimiser
state, and its RNG state. A rerun with the same run name, or a restart after a worker
failure, continues from the latest checkpoint, with any number of workers. `spec` holds
every setting of a run.
"""
