"""Readers for the on-disk datasets, the tf.data pipeline and augmentation."""
