{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "budgetd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name alone when it already
contains the chart name. Truncated to 63 characters (DNS label).
*/}}
{{- define "budgetd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "budgetd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that never change after install: used in selectors. */}}
{{- define "budgetd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "budgetd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels of every object; pass the component as .component. */}}
{{- define "budgetd.labels" -}}
helm.sh/chart: {{ include "budgetd.chart" . }}
{{ include "budgetd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: budgetd
{{- end }}

{{/* The budgetd server's component labels (selector of the Deployment). */}}
{{- define "budgetd.serverSelectorLabels" -}}
{{ include "budgetd.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "budgetd.redisSelectorLabels" -}}
{{ include "budgetd.selectorLabels" . }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "budgetd.redisName" -}}
{{- printf "%s-redis" (include "budgetd.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "budgetd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "budgetd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "budgetd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret holding redis-url, auth-tokens.yaml and webhook-url. */}}
{{- define "budgetd.secretName" -}}
{{- default (include "budgetd.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{/* True (non-empty) when the chart creates its own Secret. */}}
{{- define "budgetd.createSecret" -}}
{{- if and (not .Values.secret.existingSecret) (or .Values.redis.url .Values.auth.tokens .Values.webhook.url) }}true{{ end }}
{{- end }}

{{/* The in-cluster URL of the embedded Redis StatefulSet. */}}
{{- define "budgetd.embeddedRedisUrl" -}}
{{- printf "redis://%s.%s.svc:6379/0" (include "budgetd.redisName" .) .Release.Namespace }}
{{- end }}

{{/* The Secret with the CA bundle the budgets job verifies the server with. */}}
{{- define "budgetd.jobCaSecret" -}}
{{- default .Values.tls.secretName .Values.budgetsJob.tls.caSecret }}
{{- end }}

{{/* The gRPC address callers use inside the cluster. */}}
{{- define "budgetd.grpcAddress" -}}
{{- printf "%s.%s.svc:%d" (include "budgetd.fullname" .) .Release.Namespace (int .Values.server.grpcPort) }}
{{- end }}

{{/*
Value checks the JSON schema cannot express readably. Every template
includes this, so `helm template` and `helm install` stop with one message
that names the values to change.
*/}}
{{- define "budgetd.validate" -}}
{{- $v := .Values }}
{{- if and $v.redis.url $v.redis.embedded.enabled }}
{{- fail "redis: set either redis.url (external Redis) or redis.embedded.enabled=true (dev Redis in the release), not both" }}
{{- end }}
{{- if and $v.secret.existingSecret $v.redis.embedded.enabled }}
{{- fail "redis: secret.existingSecret supplies redis-url for an external Redis; set redis.embedded.enabled=false with it" }}
{{- end }}
{{- if not (or $v.redis.url $v.redis.embedded.enabled $v.secret.existingSecret) }}
{{- fail "redis: no Redis configured: set redis.url, or secret.existingSecret with a redis-url key, or redis.embedded.enabled=true" }}
{{- end }}
{{- if and $v.redis.embedded.enabled (ne (int $v.redis.embedded.replicas) 1) }}
{{- fail (printf "redis.embedded.replicas=%v: the embedded Redis is a single unreplicated server; use 1, or redis.url for a replicated Redis" $v.redis.embedded.replicas) }}
{{- end }}
{{- if and $v.secret.existingSecret (or $v.redis.url $v.auth.tokens $v.webhook.url) }}
{{- fail "secret.existingSecret is set: put redis-url, auth-tokens.yaml and webhook-url in that Secret and leave redis.url, auth.tokens and webhook.url empty" }}
{{- end }}
{{- if and $v.auth.enabled (not $v.auth.tokens) (not $v.secret.existingSecret) }}
{{- fail "auth.enabled=true needs auth.tokens (SHA-256 hashes), or secret.existingSecret with an auth-tokens.yaml key" }}
{{- end }}
{{- if and $v.tls.enabled (not $v.tls.secretName) }}
{{- fail "tls.enabled=true needs tls.secretName: a kubernetes.io/tls Secret with tls.crt and tls.key" }}
{{- end }}
{{- if and $v.tls.clientAuth (not $v.tls.enabled) }}
{{- fail "tls.clientAuth=true needs tls.enabled=true" }}
{{- end }}
{{- if $v.tls.enabled }}
{{- if eq (int $v.server.healthPort) (int $v.server.grpcPort) }}
{{- fail (printf "server.healthPort=%v equals server.grpcPort: with tls.enabled the plaintext health port needs a port of its own" $v.server.healthPort) }}
{{- end }}
{{- if and $v.metrics.enabled (eq (int $v.server.healthPort) (int $v.metrics.port)) }}
{{- fail (printf "server.healthPort=%v equals metrics.port: give each its own port" $v.server.healthPort) }}
{{- end }}
{{- end }}
{{- /* The server refuses a tokens file with a repeated name or hash; say so at render time. */}}
{{- $names := dict }}
{{- $hashes := dict }}
{{- range $i, $t := $v.auth.tokens }}
{{- if hasKey $names (toString $t.name) }}
{{- fail (printf "auth.tokens[%d].name: %q appears twice; names must be unique" $i $t.name) }}
{{- end }}
{{- if hasKey $hashes (toString $t.sha256) }}
{{- fail (printf "auth.tokens[%d].sha256: same hash as token %q" $i (get $hashes (toString $t.sha256))) }}
{{- end }}
{{- $_ := set $names (toString $t.name) true }}
{{- $_ := set $hashes (toString $t.sha256) (toString $t.name) }}
{{- end }}
{{- $drain := add (int $v.server.drainSeconds) (int $v.preStopSleepSeconds) }}
{{- if le (int $v.terminationGracePeriodSeconds) $drain }}
{{- fail (printf "terminationGracePeriodSeconds=%v must exceed server.drainSeconds + preStopSleepSeconds = %v, or Kubernetes kills the pod while calls drain" $v.terminationGracePeriodSeconds $drain) }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas=%v exceeds autoscaling.maxReplicas=%v" $v.autoscaling.minReplicas $v.autoscaling.maxReplicas) }}
{{- end }}
{{- if $v.budgetsJob.enabled }}
{{- if not $v.budgetsJob.budgets }}
{{- fail "budgetsJob.enabled=true needs budgetsJob.budgets (the file `budgetctl apply -f` reads)" }}
{{- end }}
{{- if and $v.auth.enabled (not $v.budgetsJob.tokenSecret.name) }}
{{- fail "budgetsJob with auth.enabled=true needs budgetsJob.tokenSecret.name: a Secret holding an admin token" }}
{{- end }}
{{- if and $v.tls.clientAuth (not $v.budgetsJob.tls.clientCertSecret) }}
{{- fail "budgetsJob with tls.clientAuth=true needs budgetsJob.tls.clientCertSecret: a kubernetes.io/tls Secret with the job's client certificate" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Probe timing fields from one entry of .Values.probes. */}}
{{- define "budgetd.probeTiming" -}}
initialDelaySeconds: {{ .initialDelaySeconds }}
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
failureThreshold: {{ .failureThreshold }}
{{- end }}
