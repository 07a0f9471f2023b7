"""TxFM model_card."""
