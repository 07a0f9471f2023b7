"""TxFM dataset_builder."""
