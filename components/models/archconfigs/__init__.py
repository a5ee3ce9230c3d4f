"""Architecture configs (config.json without weights) of the paper recipe's Hub checkpoints, so `plan` can size
the model offline: one JSON per Hub name (`owner--name.json`), each with the page it was read from."""
