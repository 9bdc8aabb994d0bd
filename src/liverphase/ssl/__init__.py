"""Self-supervised pretraining objectives (masked autoencoding, redundancy reduction)."""
