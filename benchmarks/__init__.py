"""Benchmarks of wrn-compress; each module runs with `python -m benchmarks.NAME`.

- `train_throughput`: training images per second of wrnlib's loop against a
  plain PyTorch loop, measured interleaved in one process.
- `step_profile`: where one training step's time goes.
- `gpu_epoch`: one CIFAR-10 training epoch of WRN-28-10 on a GPU, with the
  FLOPs per epoch and the device's measured bf16 matrix-multiply rate.
- `precision_parity`: test accuracy of bf16 and fp32 training over seeds.
- `measure_models`: size, memory, latency and throughput of the study's models.
- `prune_speed`: wall time of node pruning WRN-28-10.

Their recorded output is in the top-level BENCHMARKS.md, one section each.
"""
