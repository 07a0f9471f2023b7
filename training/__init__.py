"""TxFM training."""
