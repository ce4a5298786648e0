# SPDX-License-Identifier: Apache-2.0
"""The data of a run: images (per example or decoded into memory), video clips, the multi-block masks, and the
pipeline that turns examples into batches (per-example seeding, global-batch masks, skipping unreadable files)."""
