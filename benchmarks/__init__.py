"""Benchmarks of wrnlib's training loop; each module runs with `python -m benchmarks.NAME`.

- `train_throughput`: training images per second of wrnlib's loop against a
  plain PyTorch loop, measured interleaved in one process.
- `gpu_epoch`: one CIFAR-10 training epoch of WRN-28-10 on a GPU, with the
  FLOPs per epoch and the device's measured bf16 matrix-multiply rate.
- `precision_parity`: test accuracy of bf16 and fp32 training over seeds.

Each writes its own section of the top-level BENCHMARKS.md unless `--json`
or `--no-write` is given.
"""
