"""The data loader: webdataset shards -> sampled, decoded, augmented batches.

config (DataConfig, AugConfig), manifest (shard manifests), shard_io (shard bytes from a file or an
object-store URL: retries, the local cache), digest (per-sample sha256 that the
sharder writes and the loader checks), plan (how epochs are cut between ranks and workers),
sampling (frame indices), decoders (CPU decoders), frame_samples (clips stored as one JPEG per frame:
their member names and decoder), transforms and randaugment (augmentation),
stream (the loader's stages), batch (the batch records: shipped by workers, taken by the model),
loader (build_train_loader / build_eval_loader, LoaderState), dali (the NVIDIA DALI path).
"""
