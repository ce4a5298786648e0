# SPDX-License-Identifier: Apache-2.0
"""The converter's first entry point, kept so that `python -m modeling_ijepa.convert_official` and imports from
`modeling_ijepa.convert_official` keep working. The code is in `modeling_ijepa.conversion`
(`python -m modeling_ijepa.conversion`)."""

from modeling_ijepa.conversion import ijepa as _ijepa
from modeling_ijepa.conversion.ijepa import *  # noqa: F403
from modeling_ijepa.conversion.ijepa import main, parse_args

__all__ = [*_ijepa.__all__, "main", "parse_args"]

if __name__ == "__main__":
    main()
