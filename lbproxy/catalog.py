"""The built-in GPU catalog (README "GPU catalog"): category ids, their GPU types, node-label values and prices.

Purely data plus two lookups. The Kubernetes backend turns a category (narrowed by `gpu.types`) into node
affinity on `nvidia.com/gpu.product`, whose values NVIDIA GPU Feature Discovery derives from the NVML device
name with spaces replaced by dashes ("NVIDIA H100 80GB HBM3" -> "NVIDIA-H100-80GB-HBM3"). A config may add or
override entries (`gpu.catalog`) when a cluster labels its nodes differently.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "BUILTIN_CATALOG",
    "GpuCategory",
    "check_selection",
    "normalize_type",
    "override_entry",
    "products_for",
    "type_products",
]

Loc = tuple[str | int, ...]


def normalize_type(name: str) -> str:
    """Compare GPU type names loosely: `RTX 4090`, `rtx-4090` and `RTX_4090` are the same type."""
    return re.sub(r"[\s_-]+", "", name).lower()


def _field_error(field: str, reason: str) -> PydanticCustomError:
    """An error located at one field of the model, though raised by a check that spans several fields.

    config.py turns the `lbproxy_field` type back into `gpu.catalog.<id>.<field>: <reason>`.
    """
    problems = [((field,), reason)]
    return PydanticCustomError("lbproxy_field", "{reason}", {"reason": reason, "problems": problems})


def _tokens(text: str) -> list[str]:
    return [token for token in re.split(r"[\s_-]+", text.lower()) if token]


def _label_has_type(label: str, gpu_type: str) -> bool:
    """Whether the type's words appear in a row in the label: `A40` is in `NVIDIA-A40`, not `NVIDIA-A4000`."""
    want, have = _tokens(gpu_type), _tokens(label)
    return bool(want) and any(have[i : i + len(want)] == want for i in range(len(have) - len(want) + 1))


class GpuCategory(BaseModel):
    """One selectable GPU category: interchangeable GPU types of one memory size and one price."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    types: tuple[str, ...] = Field(min_length=1)
    """GPU type names as users write them in `gpu.types` (`L40S`, `RTX 6000 Ada`)."""
    products: tuple[str, ...] = ()
    """Every `nvidia.com/gpu.product` label value of the category; filled from `type_products` when empty."""
    type_products: dict[str, tuple[str, ...]] = {}
    """Label values per type, so `gpu.types` can narrow the category. A type missing here is matched to the
    `products` whose dash-separated words contain the type's words."""
    memory_gb: int = Field(ge=1)
    """GPU memory of each GPU, in GB."""
    flex_price_per_s: float = Field(ge=0, allow_inf_nan=False)
    """Price per second of a worker started on demand (feeds cost accounting)."""
    active_price_per_s: float = Field(ge=0, allow_inf_nan=False)
    """Price per second of an always-on (`workers.active`) worker."""
    description: str = ""
    """What the category is good for, in one sentence."""

    @field_validator("types", "products")
    @classmethod
    def _distinct_nonempty(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for value in values:
            key = normalize_type(value)
            if not key:
                raise ValueError("entries must not be empty")
            if key in seen:
                raise ValueError(f"{value!r} is listed twice")
            seen.add(key)
        return values

    @model_validator(mode="after")
    def _labels_cover_types(self) -> GpuCategory:
        """A type without a label value would make a narrowed category match no node at all."""
        known = {normalize_type(t) for t in self.types}
        for name in self.type_products:
            if normalize_type(name) not in known:
                raise _field_error("type_products", f"{name!r} is not one of types")
        if not self.products:
            merged = tuple(dict.fromkeys(p for labels in self.type_products.values() for p in labels))
            # A frozen model's field can only be completed here, during validation.
            object.__setattr__(self, "products", merged)
        if not self.products:
            raise _field_error("products", "at least one nvidia.com/gpu.product label value is required")
        for gpu_type in self.types:
            if not type_products(self, gpu_type):
                raise _field_error(
                    "types", f"{gpu_type!r} matches none of products; list its labels in type_products"
                )
        return self


def type_products(category: GpuCategory, gpu_type: str) -> tuple[str, ...]:
    """The node-label values of one GPU type of the category (empty if the category has no such type)."""
    key = normalize_type(gpu_type)
    for name, labels in category.type_products.items():
        if normalize_type(name) == key:
            return labels
    if key not in {normalize_type(t) for t in category.types}:
        return ()
    return tuple(p for p in category.products if _label_has_type(p, gpu_type))


def products_for(category: GpuCategory, types: Iterable[str] = ()) -> tuple[str, ...]:
    """Label values to require for the category, narrowed to `types` (empty: the whole category).

    Types that are not in the category contribute nothing, so one `gpu.types` list can narrow several
    categories at once.
    """
    wanted = list(types)
    if not wanted:
        return category.products
    return tuple(dict.fromkeys(label for gpu_type in wanted for label in type_products(category, gpu_type)))


def override_entry(category_id: object, entry: object) -> object:
    """A config's `gpu.catalog` entry, completed from the built-in entry of the same id if there is one.

    So `80gb: {flex_price_per_s: 0.001}` changes a price and keeps the rest. The built-in per-type mapping is
    dropped when the entry replaces the lists it describes.
    """
    builtin = BUILTIN_CATALOG.get(category_id) if isinstance(category_id, str) else None
    if builtin is None or not isinstance(entry, Mapping):
        return entry
    base = builtin.model_dump()
    if "type_products" not in entry and ("types" in entry or "products" in entry):
        del base["type_products"]
    if "type_products" in entry and "products" not in entry:
        del base["products"]  # derived from the new mapping
    return {**base, **entry}


def check_selection(
    catalog: Mapping[str, GpuCategory], categories: Sequence[str], types: Sequence[str]
) -> tuple[list[tuple[Loc, str]], tuple[str, ...]]:
    """Problems with `gpu.categories` and `gpu.types` (locs relative to `gpu`), and the types in the
    catalog's spelling.

    Types must belong to the chosen categories (to any category when none is chosen), and must leave each
    chosen category at least one type: a category narrowed to nothing would silently match no node.
    """
    problems: list[tuple[Loc, str]] = []
    for index, cid in enumerate(categories):
        if cid not in catalog:
            known_ids = ", ".join(catalog)
            problems.append((("categories", index), f"unknown GPU category {cid!r} (known: {known_ids})"))
        elif cid in categories[:index]:
            problems.append((("categories", index), f"{cid!r} is listed twice"))
    chosen = [cid for cid in dict.fromkeys(categories) if cid in catalog] or list(catalog)
    spelling = {normalize_type(t): t for cid in chosen for t in catalog[cid].types}
    scope = f"categories {', '.join(chosen)}" if categories else "the catalog"
    canonical: list[str] = []
    for index, gpu_type in enumerate(types):
        name = spelling.get(normalize_type(gpu_type))
        if name is None:
            known = ", ".join(spelling.values())
            problems.append((("types", index), f"unknown GPU type {gpu_type!r} in {scope} (known: {known})"))
        elif name in canonical:
            problems.append((("types", index), f"{gpu_type!r} is listed twice"))
        else:
            canonical.append(name)
    if canonical and categories and not problems:
        for cid in chosen:
            if not products_for(catalog[cid], canonical):
                its_types = ", ".join(catalog[cid].types)
                reason = f"leaves no GPU type in category {cid!r}; add one of {its_types} or remove it"
                problems.append((("types",), reason))
    return problems, tuple(canonical)


def _category(
    types: Mapping[str, tuple[str, ...]], memory_gb: int, flex: float, active: float, description: str
) -> GpuCategory:
    return GpuCategory(
        types=tuple(types),
        type_products=dict(types),
        memory_gb=memory_gb,
        flex_price_per_s=flex,
        active_price_per_s=active,
        description=description,
    )


BUILTIN_CATALOG: Mapping[str, GpuCategory] = MappingProxyType(
    {
        "16gb": _category(
            {
                "A4000": ("NVIDIA-RTX-A4000",),
                "A4500": ("NVIDIA-RTX-A4500",),
                "RTX 4000": ("NVIDIA-RTX-4000-Ada-Generation", "NVIDIA-RTX-4000-SFF-Ada-Generation"),
            },
            16, 0.00016, 0.00011, "The most cost-effective for small models.",
        ),
        "24gb-pro": _category(
            {"RTX 4090": ("NVIDIA-GeForce-RTX-4090",)},
            24, 0.00031, 0.00021, "Extreme throughput for small-to-medium models.",
        ),
        "24gb": _category(
            {
                "L4": ("NVIDIA-L4",),
                "A5000": ("NVIDIA-RTX-A5000",),
                "RTX 3090": ("NVIDIA-GeForce-RTX-3090",),
            },
            24, 0.00019, 0.00013, "Great for small-to-medium sized inference workloads.",
        ),
        "48gb-pro": _category(
            {
                "L40": ("NVIDIA-L40",),
                "L40S": ("NVIDIA-L40S",),
                "RTX 6000 Ada": ("NVIDIA-RTX-6000-Ada-Generation",),
            },
            48, 0.00053, 0.00037, "Extreme inference throughput on LLMs like Llama 3 7B.",
        ),
        "48gb": _category(
            {"A6000": ("NVIDIA-RTX-A6000",), "A40": ("NVIDIA-A40",)},
            48, 0.00034, 0.00024, "A cost-effective option for running big models.",
        ),
        "80gb-pro": _category(
            {"H100": ("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe", "NVIDIA-H100-NVL")},
            80, 0.00116, 0.00093, "Extreme throughput for big models.",
        ),
        "80gb": _category(
            {"A100": ("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe")},
            80, 0.00076, 0.00060, "High throughput GPU, yet still very cost-effective.",
        ),
        "141gb-pro": _category(
            {"H200": ("NVIDIA-H200", "NVIDIA-H200-NVL")},
            141, 0.00155, 0.00124, "Extreme throughput for huge models.",
        ),
        "180gb": _category(
            {"B200": ("NVIDIA-B200",)},
            180, 0.00240, 0.00190, "Maximum throughput for huge models.",
        ),
    }
)
"""Category id -> category, in the product page's order. Read-only: configs merge over it, never into it."""
