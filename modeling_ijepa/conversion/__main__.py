# SPDX-License-Identifier: Apache-2.0
"""`python -m modeling_ijepa.conversion`: convert a reference I-JEPA or V-JEPA checkpoint (see `conversion.ijepa`)."""

from modeling_ijepa.conversion.ijepa import main

if __name__ == "__main__":
    main()
