{{/* The app's name: nameOverride, else the service it runs (special-offers, ...),
trimmed to a label value's 63 characters. */}}
{{- define "feedline-service.name" -}}
{{- default (include "feedline-service.feedlineService" .) .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects: fullnameOverride, else the release name,
with the name unless it already has it. */}}
{{- define "feedline-service.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "feedline-service.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "feedline-service.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "feedline-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "feedline-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "feedline-service.labels" -}}
helm.sh/chart: {{ include "feedline-service.chart" . }}
{{ include "feedline-service.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: service
app.kubernetes.io/part-of: feedline
app.kubernetes.io/managed-by: {{ .Release.Service }}
feedline.dev/service: {{ include "feedline-service.feedlineService" . }}
{{- end }}

{{/* Which example service runs; fails the render when unset. */}}
{{- define "feedline-service.feedlineService" -}}
{{- required "feedlineService is required: special-offers, loyalty-program, shopping-cart or product-catalog" .Values.feedlineService }}
{{- end }}

{{- define "feedline-service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "feedline-service.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "feedline-service.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Where the feed token Secret is mounted (feedAuth.mode Token). */}}
{{- define "feedline-service.feedTokenDir" -}}
/var/run/secrets/feedline/feed-token
{{- end }}
