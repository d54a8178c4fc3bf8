-- Run once by the PostgreSQL image's entry point on an empty data directory
-- (compose.yaml mounts this folder at /docker-entrypoint-initdb.d): one database
-- per service, and one for subscribers' read models, as the demo chart's
-- ConfigMap (charts/feedline-demo/templates/postgresql-configmap.yaml) makes them.
CREATE DATABASE special_offers;
CREATE DATABASE loyalty_program;
CREATE DATABASE shopping_cart;
CREATE DATABASE product_catalog;
CREATE DATABASE read_models;
