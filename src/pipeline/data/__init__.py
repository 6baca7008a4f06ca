"""Image sources, the train/val/test split and the prepared-data format."""
