{{/* The chart's name, trimmed to a label value's 63 characters. */}}
{{- define "feedline-demo.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "feedline-demo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object of the demo chart itself (the services have their
own, from charts/feedline-service). Component is set per object. */}}
{{- define "feedline-demo.labels" -}}
helm.sh/chart: {{ include "feedline-demo.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: feedline
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* PostgreSQL: names and selector labels. */}}
{{- define "feedline-demo.postgresql.fullname" -}}
{{- printf "%s-postgresql" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "feedline-demo.postgresql.selectorLabels" -}}
app.kubernetes.io/name: postgresql
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: database
{{- end }}

{{/* The Secret with the PostgreSQL password and one DSN per database. */}}
{{- define "feedline-demo.databasesSecret" -}}
{{- printf "%s-databases" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret with the feeds' bearer tokens. */}}
{{- define "feedline-demo.feedTokensSecret" -}}
{{- printf "%s-feed-tokens" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Databases: Secret key (the service's name) => PostgreSQL database name. */}}
{{- define "feedline-demo.databases" -}}
special-offers: special_offers
loyalty-program: loyalty_program
shopping-cart: shopping_cart
product-catalog: product_catalog
read-models: read_models
{{- end }}

{{/* A value kept across upgrades: the given value, else the one already in the
Secret, else a new random one. Args: (list $ secretName key given). */}}
{{- define "feedline-demo.keptSecretValue" -}}
{{- $root := index . 0 }}
{{- $secretName := index . 1 }}
{{- $key := index . 2 }}
{{- $given := index . 3 }}
{{- if $given }}
{{- $given }}
{{- else }}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace $secretName }}
{{- if and $existing $existing.data (hasKey $existing.data $key) }}
{{- index $existing.data $key | b64dec }}
{{- else }}
{{- randAlphaNum 32 }}
{{- end }}
{{- end }}
{{- end }}

{{/* special-offers' feed URL, as subscribers in this namespace reach it. */}}
{{- define "feedline-demo.specialOffersFeedUrl" -}}
{{- printf "http://%s/events" (required "specialOffers.fullnameOverride is required" .Values.specialOffers.fullnameOverride) }}
{{- end }}
