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

{{/* The example services `feedline serve NAME` knows (feedline.services.registry.SERVICES;
tests/cluster/test_charts.py keeps the two lists equal). */}}
{{- define "feedline-service.examples" -}}
special-offers loyalty-program shopping-cart product-catalog
{{- end }}

{{/* The service's name (objects, labels, its stream); fails the render when unset, or when
it is not an example and serviceApp does not say what to serve. */}}
{{- define "feedline-service.feedlineService" -}}
{{- $name := required "feedlineService is required: special-offers, loyalty-program, shopping-cart or product-catalog, or your service's name with serviceApp" .Values.feedlineService }}
{{- if and (not .Values.serviceApp) (not (has $name (splitList " " (include "feedline-service.examples" .)))) }}
{{- fail (printf "feedlineService %q is not an example service (%s): set serviceApp to its ServiceDefinition's import path, package.module:attribute (feedline new-service writes it)" $name (include "feedline-service.examples" . | replace " " ", ")) }}
{{- end }}
{{- $name }}
{{- end }}

{{/* What `feedline serve` is given: serviceApp's import path, else the example's name. */}}
{{- define "feedline-service.serveTarget" -}}
{{- default (include "feedline-service.feedlineService" .) .Values.serviceApp }}
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

{{/* The API server's endpoints, as a JSON list of {cidr, port, protocol}:
networkPolicy.apiServer when set, else the `kubernetes` Service's endpoints in
`default`, looked up (EndpointSlices labelled kubernetes.io/service-name=kubernetes,
else the v1 Endpoints). Each address becomes a /32 (IPv4) or /128 (IPv6). The
endpoint's address and port (e.g. 6443), not the Service's ClusterIP:443: that
is what a NetworkPolicy sees, after the Service's DNAT. `lookup` answers nothing
without a cluster (`helm template`, `--dry-run` on the client, GitOps tools):
then the list is empty. */}}
{{- define "feedline-service.apiServerEndpoints" -}}
{{- $found := list }}
{{- range .Values.networkPolicy.apiServer }}
{{- $found = append $found (dict "cidr" .cidr "port" (int .port) "protocol" "TCP") }}
{{- end }}
{{- if not $found }}
{{- range (lookup "discovery.k8s.io/v1" "EndpointSlice" "default" "").items }}
{{- if and (eq (dig "metadata" "labels" "kubernetes.io/service-name" "" .) "kubernetes") (has .addressType (list "IPv4" "IPv6")) }}
{{- $bits := ternary "32" "128" (eq .addressType "IPv4") }}
{{- $ports := .ports | default list }}
{{- range .endpoints }}
{{- range .addresses }}
{{- $cidr := printf "%s/%s" . $bits }}
{{- range $ports }}
{{- if .port }}
{{- $found = append $found (dict "cidr" $cidr "port" (int .port) "protocol" (.protocol | default "TCP")) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if not $found }}
{{- range (lookup "v1" "Endpoints" "default" "kubernetes").subsets }}
{{- $ports := .ports | default list }}
{{- range .addresses }}
{{- $cidr := printf "%s/%s" .ip (ternary "128" "32" (contains ":" .ip)) }}
{{- range $ports }}
{{- $found = append $found (dict "cidr" $cidr "port" (int .port) "protocol" (.protocol | default "TCP")) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- uniq $found | toJson }}
{{- end }}
