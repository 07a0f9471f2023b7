"""TxFM benchmarks."""
