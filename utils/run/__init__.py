"""Run bookkeeping: names and logs, atomic writes, checkpoints, TensorBoard, process settings."""
