"""The example services by name, as ``feedline serve NAME`` knows them."""

from __future__ import annotations

from feedline.chassis.app import ServiceDefinition
from feedline.services import product_catalog, shopping_cart, special_offers
from feedline.services.loyalty_program import service as loyalty_program

SERVICES: dict[str, ServiceDefinition] = {
    definition.name: definition
    for definition in (
        special_offers.definition,
        loyalty_program.definition,
        shopping_cart.definition,
        product_catalog.definition,
    )
}

# Conventional local ports, so `feedline dev` and the docs agree.
DEFAULT_PORTS = {
    "special-offers": 8001,
    "loyalty-program": 8002,
    "shopping-cart": 8003,
    "product-catalog": 8004,
}
