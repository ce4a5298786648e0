# SPDX-License-Identifier: Apache-2.0
"""What goes to the Hub: the export in stock transformers' formats, and every piece of model-card code."""
