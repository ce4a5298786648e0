# SPDX-License-Identifier: Apache-2.0
"""Speed, memory, quality and reliability benchmarks of `modeling_ijepa`, run from the repository root as
`python -m benchmarks.<name>` (each has `--help`); results go to `benchmarks/results/`.

Benchmarks:
    collator_speed       the mask collators against per-sample samplers with the reference semantics
    data_pipeline        decode + crop + mask collation through a DataLoader, against what the model consumes
    in_memory_data       the per-example and the in-memory image data paths, side by side
    train_step           the CPU training step: ours against the reference implementation's choices
    gpu_train_step       training-step throughput, MFU and peak memory of the paper's models on a GPU
    scaling              the cost of a training step against batch size and sequence length
    feature_extraction   our `IJepaModel` against stock `transformers.IJepaModel`
    quality_cifar10      I-JEPA against MAE and random initialisation on CIFAR-10, for the same wall-clock
    soak_kill_resume     SIGKILL a pretraining run many times, resume it each time, compare with an uninterrupted one

Parts of the benchmarks, the first three also runnable alone:
    mae_pretraining      the MAE baseline of quality_cifar10, on the package's training loop
    plot_masks           a picture of the masks a recipe trains with
    held_checkpoint      a pretraining run held open at one moment of a checkpoint write, to be killed there
    kill_resume          the kill-and-resume machinery of soak_kill_resume
    reference_collator   per-sample mask samplers with the reference semantics (also the oracle of the masking tests)
    common               machine description, timing, result files
"""
