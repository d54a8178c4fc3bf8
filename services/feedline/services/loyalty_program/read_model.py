"""The loyalty program's read model of special offers.

Written only by the subscriber projection
``feedline.services.loyalty_program.projection:project_special_offers`` (from the
special-offers feed); read by ``GET /users/{id}/offers``.
"""

from sqlalchemy import BigInteger, Column, MetaData, Table, Text

read_model_metadata = MetaData()

special_offers = Table(
    "loyalty_special_offers",
    read_model_metadata,
    Column("offer_id", BigInteger, primary_key=True),
    Column("description", Text, nullable=False),
    # The feed position that last wrote this row: lets tests and operators see freshness.
    Column("last_sequence_number", BigInteger, nullable=False),
)
