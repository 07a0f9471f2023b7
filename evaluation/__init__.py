"""TxFM evaluation."""
