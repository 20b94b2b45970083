"""What one worker costs per second, from the config: the catalog's prices (per GPU, times `workers.gpus`) or
`cost.price_per_second`. Pure: the cost meter, `lbproxy check` and `lbproxy simulate` read the same prices.
"""

from __future__ import annotations

from .billing import UNPRICED, Rate, Tariff
from .config import Config

__all__ = ["CUSTOM", "tariff_for"]

CUSTOM = "custom"
"""The category label of workers priced by `cost.price_per_second` without a `cost.category`."""


def tariff_for(config: Config) -> tuple[Tariff, str, str]:
    """Prices per category label, the label of workers no pool names, and the label new workers are priced
    at for the spend limit (the dearest category they may land in: GPU fallback moves pods between pools)."""
    gpus = max(1, config.workers.gpus)
    cost = config.cost
    catalog = config.gpu.effective_catalog()
    if cost.price_per_second is not None:
        price = cost.price_per_second
        active = cost.active_price_per_second if cost.active_price_per_second is not None else price
        rate = Rate(price, active)
        rates = {cid: rate for cid in catalog} | {CUSTOM: rate}
    else:
        rates = {cid: Rate(c.flex_price_per_s * gpus, c.active_price_per_s * gpus) for cid, c in catalog.items()}
    default = cost.category or (CUSTOM if cost.price_per_second is not None else UNPRICED)
    new = default
    if config.backend.type == "kubernetes" and config.gpu.categories:
        new = max(config.gpu.categories, key=lambda cid: rates[cid].flex)
    return Tariff(rates), default, new
