"""fcrkit-independence: a normalised-HSIC regulariser and KCI conditional-independence checks."""

from fcrkit_independence.kci import Statement, kci_checks
from fcrkit_independence.nhsic import NormalizedHSIC, normalized_hsic

__version__ = "0.1.0"
__all__ = ["NormalizedHSIC", "Statement", "kci_checks", "normalized_hsic"]
