"""The example services by name, as ``feedline serve NAME`` knows them."""

from __future__ import annotations

import importlib

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

# `feedline serve` of a service that is not one of the examples (a module:attribute
# path, as `feedline new-service` scaffolds): the port the service chart's pod uses.
CUSTOM_SERVICE_PORT = 8080

IMPORT_PATH_FORM = (
    "package.module:attribute (a ServiceDefinition, e.g. gift_cards.service:definition)"
)


def load_definition(service: str) -> ServiceDefinition:
    """An example service by name, or the ServiceDefinition an import path names.

    Raises ValueError saying what is accepted: an example's name, or
    ``package.module:attribute``.
    """
    if service in SERVICES:
        return SERVICES[service]
    examples = ", ".join(SERVICES)
    module_name, colon, attribute = service.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(
            f"{service!r:.100} is neither an example service ({examples}) nor an import path "
            f"{IMPORT_PATH_FORM}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import {module_name!r:.100} (from {service!r:.100}): {exc}; is the "
            "service's package installed, or its folder the working folder?"
        ) from exc
    definition = getattr(module, attribute, None)
    if not isinstance(definition, ServiceDefinition):
        raise ValueError(
            f"{service!r:.100} is not a ServiceDefinition (found {type(definition).__name__}); "
            f"expected {IMPORT_PATH_FORM}"
        )
    return definition


def default_port(service: str) -> int:
    """The port `feedline serve` listens on without --port."""
    return DEFAULT_PORTS.get(service, CUSTOM_SERVICE_PORT)
